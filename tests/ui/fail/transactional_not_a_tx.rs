// The `&mut` argument of a transactional consumer must be a transaction of a SQL backend.
use stream_runtime::prelude::*;

#[consumer(stream = "orders", group = "a", transactional)]
async fn wrong(_order: String, _tx: &mut sqlx::PgConnection) -> Result<(), HandlerError> {
    Ok(())
}

fn main() {}
