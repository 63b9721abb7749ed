use stream_runtime::prelude::*;

struct Billing;

impl Billing {
    #[consumer(stream = "orders", group = "billing")]
    async fn bill(&self, _order: String) -> Result<(), String> {
        Ok(())
    }
}

fn main() {}
