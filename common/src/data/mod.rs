//! The data's shapes: a job's input schema, values read from Arrow columns row by row, the
//! schemas of the tables weir writes, and the byte order of short values.

pub mod byte_order;
pub mod output;
pub mod schema;
pub mod value;
