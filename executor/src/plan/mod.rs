//! The plan an executor runs each epoch (docs/architecture.md, Plan of operators): the source
//! read and decode stay with the epoch runner, which hands each decoded chunk to the query's
//! stateful operator; the operator pre-aggregates, routes its partials to their key groups'
//! owners, folds what this executor owns into state, emits its rows and stages them into its
//! table. The runner keeps what every operator shares: the store, restore and rebalance, the
//! exchange, dead letters, the epoch's one state batch and its snapshot.

pub mod window_aggregate;
