use stream_runtime::prelude::*;

#[consumer(stream = "orders", group = "billing")]
fn bill(_order: String) -> Result<(), String> {
    Ok(())
}

fn main() {
    // The function is still emitted unchanged: this call compiles.
    let _ = bill(String::new());
}
