//! The budget of the property tests that fuzz what weir reads from outside (records, lines,
//! exchange batches, job files, checkpoint records, admin requests): a fixed seed and a bounded
//! number of cases in the test suite, more of either from the environment (docs/testing.md).

use proptest::test_runner::{Config, RngSeed};

/// The seed of every fuzzing property when `PROPTEST_RNG_SEED` does not name another.
pub const SEED: u64 = 0x5eed_2026;

/// A property's configuration: `cases` cases from [`SEED`], unless `PROPTEST_CASES` or
/// `PROPTEST_RNG_SEED` say otherwise; failures are not persisted (each that a run finds becomes
/// a regression test by hand).
pub fn config(cases: u32) -> Config {
    // Config::default() reads the PROPTEST_* variables.
    let from_env = Config::default();
    let set = |name: &str| std::env::var_os(name).is_some();
    Config {
        cases: if set("PROPTEST_CASES") {
            from_env.cases
        } else {
            cases
        },
        rng_seed: if set("PROPTEST_RNG_SEED") {
            from_env.rng_seed
        } else {
            RngSeed::Fixed(SEED)
        },
        failure_persistence: None,
        ..from_env
    }
}
