//! Edges of the `Backend` contract no other area covers: claim deadlines are per claim,
//! and "never" durations (`Duration::MAX`) are stored without overflowing.

use super::support::*;

/// S6, S13: a claim is hidden until ITS deadline (claim time + the visibility it was claimed
/// with), whatever visibility the worker trying to reclaim it uses: a short-visibility worker
/// must not steal a long claim early, and a long-visibility worker may take an expired short
/// claim. (Workers of one group can differ: two services, or a rolling deploy changing
/// `visibility_timeout`.)
pub async fn claim_deadline_is_the_claimers(h: &Harness) {
    let b = &h.backend;
    let s = backend_stream();
    b.ensure_group(&s, "grp", &StartPosition::Earliest)
        .await
        .expect("group");
    append(b, &s, &["long", "short"], Trim::NONE).await;
    let long = b
        .claim(at(&s, "grp", "A"), 1, Duration::from_secs(60))
        .await
        .expect("claim long");
    let short = b
        .claim(at(&s, "grp", "A"), 1, Duration::from_millis(100))
        .await
        .expect("claim short");
    assert_eq!((long.len(), short.len()), (1, 1));
    // Time is the subject: the 100 ms claim passes its deadline, the 60 s one does not.
    tokio::time::sleep(Duration::from_millis(250)).await;
    // A worker with a 10 ms visibility: only "short" has passed its deadline.
    let stolen = b
        .claim(at(&s, "grp", "B"), 10, Duration::from_millis(10))
        .await
        .expect("claim with a short visibility");
    assert_eq!(
        stolen.iter().map(|c| text(&c.message)).collect::<Vec<_>>(),
        ["short"],
        "the 60 s claim was taken after 250 ms"
    );
    // A worker with a 60 s visibility takes an expired 100 ms claim (time is the subject).
    tokio::time::sleep(Duration::from_millis(50)).await;
    let taken = b
        .claim(at(&s, "grp", "C"), 10, Duration::from_secs(60))
        .await
        .expect("claim with a long visibility");
    assert_eq!(
        taken.iter().map(|c| text(&c.message)).collect::<Vec<_>>(),
        ["short"],
        "the expired 10 ms claim was not taken"
    );
}

/// "Never" durations (`Duration::MAX` poll interval, visibility, retry delay and shutdown
/// timeout) work instead of panicking the dispatcher or failing every claim.
pub async fn never_durations(h: &Harness) {
    let service = &h.service;
    let rec = Recorder::new();
    let handler = rec.then(move |m: Message| {
        let fail = m.payload[..] == b"fail"[..];
        async move {
            if fail {
                Err(HandlerError::retry("again, some day"))
            } else {
                Ok(())
            }
        }
    });
    let options = SubscribeOptions::new()
        .poll_interval(Duration::MAX)
        .visibility_timeout(Duration::MAX)
        .shutdown_timeout(Duration::MAX)
        .retry_delay(RetryDelay::Fixed(Duration::MAX));
    let consumer = service
        .subscribe("never", "g", handler, options)
        .await
        .expect("subscribe");
    for payload in ["fail", "ok"] {
        service
            .publish("never", payload, PublishOptions::new())
            .await
            .expect("publish");
    }
    rec.wait_len(2, "both messages").await;
    let report = tokio::time::timeout(Duration::from_secs(5), consumer.close())
        .await
        .expect("close returns");
    assert_eq!(report.aborted, 0);
}

/// `Backend::ping` answers while the backend is open (what a readiness probe asks) and is
/// `Closed` after the service closed it.
pub async fn ping_answers_until_closed(h: &Harness) {
    h.backend.ping().await.expect("ping an open backend");
    h.service.close().await.expect("close");
    let closed = h.backend.ping().await;
    assert!(matches!(closed, Err(Error::Closed)), "got {closed:?}");
}

/// `Backend::sql`: a backend whose streams live in a SQL database (Postgres, SQLite) names
/// it, so transactions can run there; the others name none (and refuse transactional calls
/// by that); a wrapping backend (the harness's call watch) passes the inner one's through.
pub async fn sql_database_matches_the_backend(h: &Harness) {
    let name = h.backend.name();
    let expected = matches!(name, "postgres" | "sqlite");
    assert_eq!(h.backend.sql().is_some(), expected, "{name}: Backend::sql");
    assert_eq!(
        h.service.backend().sql().is_some(),
        expected,
        "{name}: Backend::sql through a wrapping backend"
    );
}
