//! The conformance suite on the in-memory backend.

stream_runtime::conformance_tests!(memory, async {
    Some(
        std::sync::Arc::new(stream_runtime::backend::memory::MemoryBackend::new())
            as stream_runtime::backend::SharedBackend,
    )
});
