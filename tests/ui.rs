//! Compile-time behaviour of `#[consumer]` (D3): every misuse is a compile error pointing at
//! the mistake, with the user's function still emitted. One case per file in `ui/`;
//! regenerate the `.stderr` snapshots with `TRYBUILD=overwrite` and read each one.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("ui/pass/*.rs");
    t.compile_fail("ui/fail/*.rs");
}
