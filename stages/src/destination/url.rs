//! Destination URLs: the model lives in `pipeline` (so the console parses destinations
//! exactly as the worker does); re-exported here for the destinations that open them.

pub use pipeline::destination_url::*;
