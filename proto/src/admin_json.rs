//! JSON for the admin messages' enums: their names without the type prefix (`RUNNING`), not
//! the wire numbers.

use serde::Serializer;

use crate::admin::{ExecutorState, QueryState};

/// `QUERY_STATE_PAUSED` → `PAUSED`.
pub fn query_state_name(value: i32) -> &'static str {
    QueryState::try_from(value)
        .unwrap_or(QueryState::Unspecified)
        .as_str_name()
        .trim_start_matches("QUERY_STATE_")
}

/// `EXECUTOR_STATE_ACTIVE` → `ACTIVE`.
pub fn executor_state_name(value: i32) -> &'static str {
    ExecutorState::try_from(value)
        .unwrap_or(ExecutorState::Unspecified)
        .as_str_name()
        .trim_start_matches("EXECUTOR_STATE_")
}

pub fn query_state<S: Serializer>(value: &i32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(query_state_name(*value))
}

pub fn executor_state<S: Serializer>(value: &i32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(executor_state_name(*value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::QueryStatus;

    #[test]
    fn states_print_by_name_and_fields_in_camel_case() {
        let status = QueryStatus {
            run_id: "r".into(),
            state: QueryState::Paused as i32,
            last_epoch: Some(3),
            ..Default::default()
        };
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["state"], "PAUSED");
        assert_eq!(json["runId"], "r");
        assert_eq!(json["lastEpoch"], 3);
        assert_eq!(executor_state_name(ExecutorState::Lost as i32), "LOST");
    }
}
