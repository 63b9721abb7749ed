use stream_runtime::prelude::*;

#[consumer(stream = "new orders", group = 7)]
async fn bill(_order: String) -> Result<(), String> {
    Ok(())
}

fn main() {}
