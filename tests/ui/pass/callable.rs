// The function stays an ordinary function: callable, and usable as a value.
use std::sync::Arc;
use stream_runtime::prelude::*;

struct Counter(std::sync::atomic::AtomicU32);

#[consumer(stream = "ticks", group = "count")]
async fn count(n: u32, counter: State<Counter>) -> Result<(), HandlerError> {
    let counter: &Counter = &counter;
    counter.0.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let counter = State(Arc::new(Counter(Default::default())));
    count(2, counter.clone()).await.unwrap();
    let f = count;
    f(3, counter.clone()).await.unwrap();
    assert_eq!(counter.0 .0.load(std::sync::atomic::Ordering::SeqCst), 5);
}
