//! The NATS JetStream backend: the conformance suite against the shared server
//! (`STREAMS_TEST_NATS_URL`, default `nats://127.0.0.1:4222`).

stream_runtime::conformance_tests!(nats, stream_tests::shared_nats());
