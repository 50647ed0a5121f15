//! The Kafka client `weir gen` produces with: librdkafka's or weir's light one, behind one
//! interface for the generator's loop.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;

use super::kafka::{self, ProduceTimes};
use super::light::LightProducer;
use super::GenArgs;

/// Which Kafka client produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProducerKind {
    Librdkafka,
    Light,
}

pub struct Producer {
    client: Client,
    /// An instant and the wall-clock time at it (ms since the epoch): a record's produce
    /// time is taken from the instant the generator read for its pace, one clock read a
    /// record instead of three.
    clock: (Instant, i64),
}

enum Client {
    Librdkafka(kafka::Producer),
    Light(LightProducer),
}

impl Producer {
    /// Connects to `brokers` (the topic exists by now).
    pub fn connect(brokers: &str, args: &GenArgs) -> anyhow::Result<Self> {
        let client = match args.producer {
            ProducerKind::Librdkafka => {
                Client::Librdkafka(kafka::Producer::connect(brokers, args)?)
            }
            ProducerKind::Light => Client::Light(LightProducer::connect(
                brokers,
                &args.topic,
                &args.compression,
                Duration::from_millis(args.linger_ms),
                args.produce_times,
            )?),
        };
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .context("the clock is before 1970")?;
        let wall = i64::try_from(wall.as_millis()).context("the clock is past what i64 holds")?;
        Ok(Producer {
            client,
            clock: (Instant::now(), wall),
        })
    }

    /// Produces one record handed over at `now`, its CreateTime.
    pub fn send(
        &mut self,
        partition: i32,
        key: &[u8],
        value: &[u8],
        now: Instant,
    ) -> anyhow::Result<()> {
        let (base, wall) = self.clock;
        let at = wall + i64::try_from(now.saturating_duration_since(base).as_millis())?;
        match &mut self.client {
            Client::Librdkafka(p) => p.send(partition, key, value, at),
            Client::Light(p) => p.send(partition, key, value, at, now),
        }
    }

    /// Waits until `until`, the next record's time on the pace asked; the light producer
    /// sends what waits when its linger is up meanwhile (librdkafka's own thread does).
    pub fn wait_until(&mut self, until: Instant) -> anyhow::Result<()> {
        if let Client::Light(p) = &mut self.client {
            if let Some(due) = p.due().filter(|due| *due < until) {
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                p.flush()?;
            }
        }
        std::thread::sleep(until.saturating_duration_since(Instant::now()));
        Ok(())
    }

    /// Waits until every record is delivered; returns their produce times if kept.
    pub fn finish(self) -> anyhow::Result<Option<ProduceTimes>> {
        match self.client {
            Client::Librdkafka(p) => p.finish(),
            Client::Light(p) => p.finish(),
        }
    }
}
