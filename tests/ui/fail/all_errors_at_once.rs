// Errors are accumulated: every mistake is reported in one build.
use stream_runtime::prelude::*;

#[consumer(stream = "orders", grup = "billing", poll_interval = "1 s")]
fn bill<T>(_order: T) {}

fn main() {}
