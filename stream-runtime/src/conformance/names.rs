//! Names: app and namespace overrides, custom dead-letter streams, upper case and odd
//! characters, invalid names.

use super::support::*;

/// S1, S12: a custom dead-letter name is a short name, subscribable with the same call.
pub async fn custom_dead_letter_stream(h: &Harness) {
    let handler = |_m: Message| async { Err(HandlerError::permanent("no")) };
    h.service
        .subscribe(
            "custom",
            &group(),
            handler,
            h.options().dead_letter("custom-failures"),
        )
        .await
        .expect("subscribe");
    let dead = dead_letters(h, "custom-failures").await;
    publish(h, "custom", "m").await;
    dead.wait_len(1, "the dead letter").await;
    assert_eq!(
        &*dead.messages()[0].stream,
        h.service.stream_name("custom-failures").expect("name")
    );
}

/// S1: app and namespace overrides per publish and subscription; empty overrides are
/// ignored.
pub async fn app_namespace_overrides(h: &Harness) {
    let app = unique_name("other");
    let (over, plain) = (Recorder::new(), Recorder::new());
    h.service
        .subscribe(
            "ns",
            &group(),
            over.handler(),
            h.options().app(app.as_str()).namespace("eu"),
        )
        .await
        .expect("subscribe");
    h.service
        .subscribe(
            "ns",
            &group(),
            plain.handler(),
            h.options().app("").namespace(""),
        )
        .await
        .expect("subscribe");
    h.service
        .publish(
            "ns",
            "over",
            PublishOptions::new().app(app.as_str()).namespace("eu"),
        )
        .await
        .expect("publish");
    h.service
        .publish("ns", "plain", PublishOptions::new().app("").namespace(""))
        .await
        .expect("publish");
    over.wait_payload("over").await;
    plain.wait_payload("plain").await;
    assert_eq!(&*over.messages()[0].stream, format!("{app}.eu.ns"));
    flush(h, "ns", &plain).await;
    assert_eq!(over.len(), 1);
    assert_eq!(plain.payloads()[0], "plain");
}

/// S1, S14: upper-case stream and group names work, push wake-ups included.
pub async fn upper_case_names(h: &Harness) {
    let rec = Recorder::new();
    h.service
        .subscribe(
            "Orders.EU-West",
            "Billing-Group",
            rec.handler(),
            h.options().poll_interval(Duration::from_secs(30)),
        )
        .await
        .expect("subscribe");
    h.wait_idle("Orders.EU-West").await;
    publish(h, "Orders.EU-West", "Hello").await;
    rec.wait_payload("Hello").await;
    assert!(rec.messages()[0].stream.ends_with(".Orders.EU-West"));
}

/// S1: bad names are rejected with a clear error before reaching the backend.
pub async fn invalid_names_rejected(h: &Harness) {
    for bad in ["", "has space", "tab\t", "nul\0", &"x".repeat(250)] {
        let result = h.service.publish(bad, "m", PublishOptions::new()).await;
        assert!(
            matches!(result, Err(Error::InvalidName { .. })),
            "{bad:?}: {result:?}"
        );
    }
    let result = h
        .service
        .subscribe("ok", "bad group", Recorder::new().handler(), h.options())
        .await;
    assert!(
        matches!(result, Err(Error::InvalidName { .. })),
        "{result:?}"
    );
    let message = result.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("bad group"), "{message}");
}

/// S1: names with upper case, dots, quotes, braces, percent signs, unicode and 200 bytes
/// reach the backend safely and stay distinct.
pub async fn odd_names(h: &Harness) {
    let b = &h.backend;
    let base = unique_name("b");
    let long = format!("{base}.{}", "é".repeat((200 - base.len() - 1) / 2));
    assert!(long.len() <= 200);
    let names = [
        format!("{base}.NS.Orders.V2"),
        format!("{base}.ns.it's\"quoted\";--"),
        format!("{base}.ns.{{brace}}%25%"),
        format!("{base}.ns.日本語-ストリーム"),
        long,
    ];
    for (i, name) in names.iter().enumerate() {
        let group = format!("Gr'{i}{{}}%\"é");
        b.ensure_group(name, &group, &StartPosition::Earliest)
            .await
            .unwrap_or_else(|e| panic!("group on {name:?}: {e}"));
        append(b, name, &[&format!("p{i}")], Trim::NONE).await;
    }
    for (i, name) in names.iter().enumerate() {
        let group = format!("Gr'{i}{{}}%\"é");
        let claimed = b
            .claim(at(name, &group, "c"), 10, Duration::from_secs(60))
            .await
            .expect("claim");
        assert_eq!(claimed.len(), 1, "{name:?}");
        assert_eq!(text(&claimed[0].message), format!("p{i}"));
        assert_eq!(&*claimed[0].message.stream, name.as_str());
        b.ack(at(name, &group, "c"), &[claimed[0].claim()])
            .await
            .expect("ack");
    }
}

/// S1: the default dead-letter stream `<full>.dead` must be readable with the same
/// subscribe call, so a stream whose dead-letter name passes 200 bytes is refused up front;
/// with a short custom dead-letter stream the same stream works, and so does a stream whose
/// `.dead` name is exactly 200 bytes.
pub async fn dead_letter_name_over_the_limit_is_refused(h: &Harness) {
    let prefix = h.service.stream_name("x").expect("name").len() - 1;
    // A full name of exactly 200 bytes: its `.dead` stream would be 205.
    let name = "x".repeat(200 - prefix);
    let result = h
        .service
        .subscribe(&name, &group(), Recorder::new().handler(), h.options())
        .await;
    match result {
        Err(Error::InvalidName { what, reason, .. }) => {
            assert_eq!(what, "dead-letter stream");
            assert!(reason.contains("dead_letter"), "{reason}");
        }
        other => panic!("expected an invalid dead-letter name, got {other:?}"),
    }
    let custom = h
        .service
        .subscribe(
            &name,
            &group(),
            Recorder::new().handler(),
            h.options().dead_letter("dead"),
        )
        .await
        .expect("custom dead-letter stream");
    custom.close().await;
    let fits = h
        .service
        .subscribe(
            &"y".repeat(195 - prefix),
            &group(),
            Recorder::new().handler(),
            h.options(),
        )
        .await
        .expect("dead-letter stream of exactly 200 bytes");
    fits.close().await;
}
