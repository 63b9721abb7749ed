// `crate = "..."` through a re-export, and a consumer declared inside a function.
use ::stream_runtime as rt;

mod handlers {
    #[crate::rt::consumer(stream = "orders", group = "audit", crate = "crate::rt")]
    pub(crate) async fn audit(_order: String) -> Result<(), String> {
        Ok(())
    }
}


fn main() {
    #[rt::consumer(stream = "orders", group = "local")]
    async fn local(_order: u64) -> Result<(), String> {
        Ok(())
    }

    let names: Vec<_> = rt::registry::consumers()
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(names, ["audit", "local"]);
}
