//! Reading a Kafka source ahead (docs/architecture.md, One epoch): once an epoch's own reading
//! is done, a thread of the lowest priority goes on taking the records the client fetched for
//! the assigned partitions, from where the epoch's ranges ended, and decodes them while the
//! epoch exchanges, folds, stages and waits for its decision, and while the trigger waits for
//! the next plan. Both clients read ahead so: librdkafka's reader from its consumer's queues
//! (here), weir's from its fetcher's (`fetch_reader`).
//!
//! What the next epoch reads is planned after this starts: it begins where the last ranges
//! ended and ends at what the broker held when it was planned, which takes in every record
//! fetched by then, unless `max_offsets_per_trigger` cuts it shorter. The thread takes no more
//! of a partition than the last range of it held: a steady run's next range, under that cap
//! or at a steady pace, is about as long. The next read takes the decoded chunks whose records
//! all lie in its ranges as they are, and goes through the records of any other chunk one by
//! one, as it does records polled itself: those within its ranges are decoded again, and those
//! past them are held for the range they start. Decoded rows may have given up their raw
//! records (`shed`): a chunk of those that does not lie wholly within the ranges cannot be
//! decoded again, so the read drops it and what came after it, and reads afresh from where
//! each partition stands. A read that does not continue where the last ended (a replay, a
//! rescale) drops them all, and so does one after a thread that panicked or lost records: it
//! assigns the partitions afresh, since the records that thread took are lost with it.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use weir_common::decode::JsonDecoder;

use crate::input::consumer_queue::Polled;
use crate::input::kafka_reader::{Gathering, Reading, POLL_BATCH};
use crate::input::read_ahead::lowest_priority;
use crate::input::shed::Shedding;
use crate::input::{Chunk, DecodedChunk};

/// Memory read ahead and not yet taken (`DecodedChunk::memory`: records, decoded columns, and
/// the buffers the records' values slice or, once shed, the raw bytes kept): reading stops
/// there, and what the client fetches waits in its queues (64 MB more, its prefetch).
const AHEAD_BYTES: usize = 96 << 20;

/// How long the thread waits for records before looking whether it is to stop.
pub(super) const AHEAD_WAIT: Duration = Duration::from_millis(10);

/// What the thread hands on: a decoded chunk with the thread's CPU time for it, or the records
/// it had gathered when it was stopped (handed on as they are so that it stops at once).
pub enum Ahead {
    Decoded(DecodedChunk, Duration),
    Records(Chunk),
}

/// How a thread reading ahead ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ended {
    /// Every record it took from the client's queues was handed on.
    Whole,
    /// Records it took were not handed on (an answer that did not decode): the next read
    /// must fetch afresh.
    Lost,
}

/// What a reader's state tells reading ahead: where its last read ended in each partition,
/// empty when the next read starts afresh (both clients' readers keep it so).
pub(super) trait ReadTo {
    fn read_to(&mut self) -> &mut HashMap<i32, i64>;
}

/// Where a reader keeps its thread reading ahead between reads.
#[derive(Default)]
pub(super) struct AheadSlot(Mutex<Option<KafkaAhead>>);

impl AheadSlot {
    fn lock(&self) -> MutexGuard<'_, Option<KafkaAhead>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts `read` ahead when the last read left partitions to go on from. A thread that no
    /// read took is stopped first (it holds the reader's state until then), and what it took
    /// from the queues goes with it: the next read starts afresh, with nothing read ahead.
    pub(super) fn restart<S: ReadTo>(
        &self,
        state: &Mutex<S>,
        decoder: Arc<JsonDecoder>,
        shedding: Option<Shed>,
        read: impl FnOnce(&Out<'_>) -> Ended + Send + 'static,
    ) -> std::io::Result<()> {
        let mut ahead = self.lock();
        let unread = ahead.take().is_some();
        let assigned = {
            let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
            if unread {
                state.read_to().clear();
            }
            !state.read_to().is_empty()
        };
        if assigned {
            *ahead = Some(KafkaAhead::start(decoder, shedding, read)?);
        }
        Ok(())
    }

    /// Stops the thread for a read that starts: the reader's state (which the thread held),
    /// and what the thread read, none when there was no thread or it lost records it took
    /// from the queues (the read then starts afresh).
    pub(super) fn take<'s, S: ReadTo>(
        &self,
        state: &'s Mutex<S>,
    ) -> (MutexGuard<'s, S>, Option<Vec<Ahead>>) {
        let ahead = self.lock().take().map(KafkaAhead::finish);
        let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
        if matches!(ahead, Some(None)) {
            state.read_to().clear();
        }
        (state, ahead.flatten())
    }

    /// Chunks the thread decoded so far.
    #[cfg(test)]
    pub(super) fn decoded(&self) -> usize {
        self.lock().as_ref().map_or(0, KafkaAhead::decoded)
    }
}

/// A thread reading ahead, and what it read.
pub struct KafkaAhead {
    stop: Arc<AtomicBool>,
    /// The thread's id, once it runs: it is raised to normal priority when stopped.
    tid: Arc<AtomicI32>,
    /// Decoded chunks handed on: tests wait for them.
    #[cfg(test)]
    decoded: Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<JoinHandle<Ended>>,
    chunks: Receiver<Ahead>,
}

/// The rules that let decoded rows give up their raw records, and the plan time they are
/// judged against (the last plan's: the next one is no earlier).
pub(super) type Shed = (Arc<Shedding>, i64);

/// Where the thread's body hands on what it read, and learns whether to stop.
pub(super) struct Out<'a> {
    stop: &'a AtomicBool,
    sender: Sender<Ahead>,
    decoder: &'a JsonDecoder,
    shedding: Option<Shed>,
    /// Memory of the chunks handed on (`DecodedChunk::memory`).
    waiting_bytes: Cell<usize>,
    /// The thread's CPU time when it last handed on a chunk.
    since: Cell<Duration>,
    #[cfg(test)]
    sent: Arc<std::sync::atomic::AtomicUsize>,
}

/// CPU time, not wall time: at the lowest priority the thread waits for cores often.
fn thread_cpu_time() -> Duration {
    weir_telemetry::process::thread_cpu_time().unwrap_or_default()
}

impl Out<'_> {
    /// Whether the read is to stop: it was asked to, or `AHEAD_BYTES` are waiting.
    pub(super) fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || self.waiting_bytes.get() >= AHEAD_BYTES
    }

    /// Decodes `records` and hands them on: false when no one takes them any more (the reader
    /// is gone).
    pub(super) fn decoded(&self, records: Chunk) -> bool {
        let mut decoded = DecodedChunk::decode(records, self.decoder);
        if let Some((shedding, planned_at)) = &self.shedding {
            shedding.shed(&mut decoded, *planned_at);
        }
        self.waiting_bytes
            .set(self.waiting_bytes.get() + decoded.memory());
        let now = thread_cpu_time();
        let worked = now.saturating_sub(self.since.replace(now));
        let sent = self.sender.send(Ahead::Decoded(decoded, worked)).is_ok();
        #[cfg(test)]
        self.sent.fetch_add(1, Ordering::Release);
        sent
    }

    /// Hands on the records gathered when the read was stopped, as they are, or decoded when
    /// it took all it was to (`whole`).
    pub(super) fn hand_over(&self, gathering: &mut Gathering, whole: bool) {
        if whole {
            gathering.hand_over(&mut |c| {
                self.decoded(c);
            });
        } else {
            gathering.hand_over(&mut |records| {
                let _ = self.sender.send(Ahead::Records(records));
            });
        }
    }
}

impl KafkaAhead {
    /// Starts `read` on a thread of the lowest priority, decoding with `decoder` what it
    /// hands on.
    pub(super) fn start(
        decoder: Arc<JsonDecoder>,
        shedding: Option<Shed>,
        read: impl FnOnce(&Out<'_>) -> Ended + Send + 'static,
    ) -> std::io::Result<Self> {
        let (sender, chunks) = channel();
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let tid = Arc::new(AtomicI32::new(0));
        let thread_tid = tid.clone();
        #[cfg(test)]
        let (decoded, sent) = {
            let decoded = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            (decoded.clone(), decoded)
        };
        let thread = std::thread::Builder::new()
            .name("read-ahead".into())
            .spawn(move || {
                lowest_priority();
                // SAFETY: gettid has no preconditions.
                let id = unsafe { libc::gettid() };
                thread_tid.store(id, Ordering::SeqCst);
                // Stopped before the id was there to be raised: raised here.
                if thread_stop.load(Ordering::SeqCst) {
                    normal_priority(id);
                }
                read(&Out {
                    stop: &thread_stop,
                    sender,
                    decoder: &decoder,
                    shedding,
                    waiting_bytes: Cell::new(0),
                    since: Cell::new(thread_cpu_time()),
                    #[cfg(test)]
                    sent,
                })
            })?;
        Ok(Self {
            stop,
            tid,
            #[cfg(test)]
            decoded,
            thread: Some(thread),
            chunks,
        })
    }

    /// Stops the thread, waits for it (at most one batch polled and one chunk decoded), and
    /// answers everything it read, in order; none when it panicked or lost records it took
    /// out of the client's queues.
    pub fn finish(mut self) -> Option<Vec<Ahead>> {
        let ended = self.halt();
        (ended == Some(Ended::Whole)).then(|| self.chunks.try_iter().collect())
    }

    /// Decoded chunks handed on so far.
    #[cfg(test)]
    pub fn decoded(&self) -> usize {
        self.decoded.load(Ordering::Acquire)
    }

    /// Stops the thread and waits for it: how it ended, none when it panicked.
    fn halt(&mut self) -> Option<Ended> {
        self.stop.store(true, Ordering::SeqCst);
        // At the lowest priority the thread could wait long for a core while the epoch waits
        // for it (the other executor, or a producer, keeps the cores busy): it finishes at
        // normal priority.
        let tid = self.tid.load(Ordering::SeqCst);
        if tid != 0 {
            normal_priority(tid);
        }
        match self.thread.take() {
            Some(thread) => thread.join().ok(),
            None => Some(Ended::Whole),
        }
    }
}

impl Drop for KafkaAhead {
    fn drop(&mut self) {
        // Dropped unread: the next read, if any, assigns afresh or continues after it.
        let _ = self.halt();
    }
}

/// Puts thread `tid` back under the normal policy.
fn normal_priority(tid: i32) {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler reads the parameter it is given; a thread that has ended
    // makes it fail, which changes nothing.
    unsafe { libc::sched_setscheduler(tid, libc::SCHED_OTHER, &param) };
}

/// librdkafka's reader's thread: polls every assigned partition's queue, up to as many records
/// as its last range held, decodes each full chunk and hands it on, until it has them all, is
/// stopped, or `AHEAD_BYTES` are waiting. It holds the reader's state throughout: the next
/// read stops it before it reads.
pub(super) fn from_librdkafka(
    state: &Mutex<Reading>,
    chunk: usize,
    max_bytes: usize,
    out: &Out<'_>,
) -> Ended {
    let mut guard = state.lock().unwrap_or_else(PoisonError::into_inner);
    let Reading {
        session,
        slots,
        wake,
        last_lengths,
        ..
    } = &mut *guard;
    let Some(session) = session.as_mut() else {
        return Ended::Whole;
    };
    // Records each partition has left to take.
    let mut left: Vec<(i32, i64)> = last_lengths.iter().map(|(p, n)| (*p, *n)).collect();
    let mut gathering = Gathering::new(chunk);
    let mut going = true;
    loop {
        left.retain(|(_, n)| *n > 0);
        if !going || left.is_empty() || out.stopped() {
            break;
        }
        let mut polled_any = false;
        for (partition, left) in &mut left {
            let Some(queue) = session.partitions.get_mut(partition) else {
                going = false;
                break;
            };
            let batch = usize::try_from(*left).unwrap_or(0).clamp(1, POLL_BATCH);
            let polled = queue.poll_batch(slots, batch, 0, |polled| {
                if let Polled::Message {
                    partition,
                    offset,
                    key,
                    payload,
                } = polled
                {
                    polled_any = true;
                    *left -= 1;
                    gathering.add_polled((partition, offset), key, payload, max_bytes, &mut |c| {
                        going &= out.decoded(c);
                    });
                }
            });
            if polled.is_err() {
                // The next read meets the error itself, if it is one still.
                going = false;
                break;
            }
        }
        if going && !polled_any && wake.wait(AHEAD_WAIT).is_err() {
            break;
        }
    }
    // Records polled and not yet in a chunk must reach the next read: they are no longer in
    // librdkafka's queues. They are decoded when the thread took all it was to, and handed on
    // as they are when it was stopped (the read waits for it).
    out.hand_over(&mut gathering, left.is_empty() && going);
    Ended::Whole
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::mpsc;

    use bytes::Bytes;

    use super::*;
    use crate::input::kafka_reader::tests::decoder;
    use crate::input::Record;

    /// Reading ahead stops once `AHEAD_BYTES` wait, counted by what the chunks keep alive:
    /// records of weir's client slice whole batch bodies, far larger than their own bytes.
    #[test]
    fn reading_ahead_stops_at_the_bytes_its_records_keep_alive() {
        const CHUNK: usize = 4 << 20;
        let body = Bytes::from(vec![b'x'; CHUNK]);
        let handed = Arc::new(AtomicUsize::new(0));
        let (ended, stopped_by_itself) = mpsc::channel();
        let counted = handed.clone();
        let ahead = KafkaAhead::start(decoder(), None, move |out| {
            // Bounded for the test's sake, should reading ahead never stop by itself.
            while !out.stopped() && counted.load(Ordering::SeqCst) < 16 * AHEAD_BYTES {
                let records = (0..4)
                    .map(|offset| Record {
                        partition: 0,
                        offset,
                        key: None,
                        value: Some(body.slice(offset as usize * 100..(offset as usize + 1) * 100)),
                        cut_from: None,
                    })
                    .collect();
                let chunk = Chunk {
                    records,
                    buffers: Vec::new(),
                    held: CHUNK,
                    end: None,
                };
                if !out.decoded(chunk) {
                    break;
                }
                counted.fetch_add(CHUNK, Ordering::SeqCst);
            }
            let _ = ended.send(());
            Ended::Whole
        })
        .unwrap();
        stopped_by_itself
            .recv_timeout(Duration::from_secs(60))
            .expect("the thread ends");
        let handed = handed.load(Ordering::SeqCst);
        assert!(
            (AHEAD_BYTES..AHEAD_BYTES + CHUNK).contains(&handed),
            "{handed} bytes handed on"
        );
        let chunks = ahead.finish().expect("whole");
        assert_eq!(chunks.len(), handed / CHUNK);
    }
}
