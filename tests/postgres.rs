//! The Postgres backend: the whole conformance suite, plus what only Postgres can get wrong
//! (late commits under concurrent publishers, concurrent migrations, orphan pending rows,
//! connection errors).

mod pg;

stream_runtime::conformance_tests!(postgres, crate::pg::shared_backend());
