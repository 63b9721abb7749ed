use stream_runtime::prelude::*;

#[consumer(max_retries = 3)]
async fn bill(_order: String) -> Result<(), String> {
    Ok(())
}

fn main() {}
