//! Cases run on every backend, each an async fn of the backend URL.

use super::*;

pub(super) async fn typed_payload_decoded(url: String) {
    let probe = Probe::default();
    let rt = start(config(&url, "typed", "", &[]), &probe).await;
    let order = Order {
        id: 7,
        amount_cents: 1999,
    };
    rt.service()
        .publish_json("orders", &order, PublishOptions::new())
        .await
        .expect("publish");
    probe
        .wait_for("the typed order", |p| p.count("typed 7 1999 1") == 1)
        .await;
    rt.shutdown().await.expect("clean shutdown");
}

pub(super) async fn failed_attempt_is_retried(url: String) {
    let probe = Probe::default();
    let rt = start(config(&url, "retry", "", &[]), &probe).await;
    for id in 1..=3 {
        let order = Order {
            id,
            amount_cents: 100,
        };
        rt.service()
            .publish_json("payments", &order, PublishOptions::new())
            .await
            .expect("publish");
    }
    probe
        .wait_for("three orders to succeed on their second attempt", |p| {
            p.count("flaky-ok") == 3
        })
        .await;
    for id in 1..=3 {
        assert_eq!(probe.count(&format!("flaky {id} attempt 1")), 1);
        assert_eq!(probe.count(&format!("flaky {id} attempt 2")), 1);
    }
    rt.shutdown().await.expect("clean shutdown");
}

pub(super) async fn exhausted_and_poison_messages_are_dead_lettered(url: String) {
    let probe = Probe::default();
    let rt = start(config(&url, "dead", "", &[]), &probe).await;
    let service = rt.service().clone();
    service
        .publish("shipments", "parcel", PublishOptions::new())
        .await
        .expect("publish");
    service
        .publish("orders", "{not json", PublishOptions::new())
        .await
        .expect("publish poison");
    probe
        .wait_for("two dead letters", |p| p.count("dead ") == 2)
        .await;
    let events = probe.events();
    let shipments = service.stream_name("shipments").expect("name");
    let orders = service.stream_name("orders").expect("name");
    assert!(
        events.contains(&format!(
            "dead from={shipments} attempts=2 reason=warehouse offline"
        )),
        "max_retries = 1 from the attribute gives two attempts: {events:?}"
    );
    assert_eq!(probe.count("fails attempt"), 2, "{events:?}");
    let poison = events
        .iter()
        .find(|e| e.starts_with(&format!("dead from={orders} attempts=1 ")))
        .unwrap_or_else(|| panic!("poison message dead-lettered on its first attempt: {events:?}"));
    assert!(poison.contains("could not decode"), "{poison}");
    assert_eq!(
        probe.count("typed"),
        0,
        "the poison never reached the handler"
    );
    rt.shutdown().await.expect("clean shutdown");
}

/// Publishes 8 messages to the gated consumer and returns how many ran at once.
async fn observed_concurrency(url: &str, test: &str, extra: &str, env: &[(&str, &str)]) -> u64 {
    let probe = Probe::default();
    let (open, gate) = watch::channel(false);
    *probe.0.gate.lock().unwrap_or_else(|e| e.into_inner()) = Some(gate);
    let config = config(url, test, extra, env);
    let expected = config
        .resolve("gated", &Attributes::NONE)
        .options
        .concurrency as u64;
    let rt = start(config, &probe).await;
    let options = &rt
        .consumers()
        .iter()
        .find(|c| c.name == "gated")
        .expect("gated started")
        .options;
    assert_eq!(options.concurrency as u64, expected);
    for i in 0..8 {
        rt.service()
            .publish("work", format!("job {i}"), PublishOptions::new())
            .await
            .expect("publish");
    }
    probe
        .wait_for("the workers to fill up", |p| {
            p.0.in_flight.load(Ordering::SeqCst) == expected
        })
        .await;
    open.send_replace(true);
    probe
        .wait_for("every job", |p| p.count("gated done") == 8)
        .await;
    rt.shutdown().await.expect("clean shutdown");
    probe.0.max_in_flight.load(Ordering::SeqCst)
}

pub(super) async fn config_override_changes_concurrency(url: String) {
    let seen =
        observed_concurrency(&url, "conc", "[consumers.gated]\nconcurrency = 3\n", &[]).await;
    assert_eq!(seen, 3);
}

pub(super) async fn env_override_wins_over_file(url: String) {
    let seen = observed_concurrency(
        &url,
        "env",
        "[consumers.gated]\nconcurrency = 2\n",
        &[("STREAMS_CONSUMERS__GATED__CONCURRENCY", "4")],
    )
    .await;
    assert_eq!(seen, 4);
}

pub(super) async fn disabled_consumer_is_not_started(url: String) {
    let probe = Probe::default();
    let rt = start(
        config(
            &url,
            "disabled",
            "[consumers.optional]\nenabled = false\n",
            &[],
        ),
        &probe,
    )
    .await;
    let names: Vec<&str> = rt.consumers().iter().map(|c| c.name).collect();
    assert!(!names.contains(&"optional"), "{names:?}");
    assert!(names.contains(&"typed"), "{names:?}");
    rt.service()
        .publish("extras", "x", PublishOptions::new())
        .await
        .expect("publish");
    rt.service()
        .publish_json(
            "orders",
            &Order {
                id: 1,
                amount_cents: 1,
            },
            PublishOptions::new(),
        )
        .await
        .expect("publish");
    // The enabled consumer handled its message; by then the disabled one would have had time.
    probe
        .wait_for("the typed order", |p| p.count("typed 1") == 1)
        .await;
    assert_eq!(probe.count("optional"), 0);
    rt.shutdown().await.expect("clean shutdown");
}

pub(super) async fn handler_publishes_through_the_macro_and_the_runtime(url: String) {
    let probe = Probe::default();
    let rt = start(config(&url, "publishing", "", &[]), &probe).await;
    let order = Order {
        id: 31,
        amount_cents: 100,
    };
    rt.service()
        .publish_json(
            "checkout",
            &order,
            PublishOptions::new().namespace("accounts"),
        )
        .await
        .expect("publish");
    let invoices = rt.service().config().app.clone() + ".accounts.invoices";
    let expected = format!("invoice 31 on {invoices} from invoice");
    probe
        .wait_for("the invoice published by the handler", |p| {
            p.count(&expected) == 1
        })
        .await;
    rt.shutdown().await.expect("clean shutdown");
}

/// Middleware given to the runtime wraps every consumer: it sees each message with its
/// group before the handler, and can refuse one (here permanently: straight to the
/// dead-letter stream, whose consumer it wraps too).
pub(super) async fn middleware_wraps_every_consumer(url: String) {
    let probe = Probe::default();
    let seen = probe.clone();
    let rt = Runtime::new()
        .config(config(&url, "middleware", "", &[]))
        .state(probe.clone())
        .middleware(move |msg: Message, next: stream_runtime::Next| {
            let seen = seen.clone();
            async move {
                seen.record(format!("mw {} {}", msg.stream, next.group()));
                // A dead letter keeps the original's headers: let it through.
                let dead = msg.header(dead_letter_headers::STREAM).is_some();
                if msg.header("reject").is_some() && !dead {
                    return Err(HandlerError::permanent("refused by the middleware"));
                }
                let outcome = next.run(msg).await;
                seen.record(format!("mw after ok={}", outcome.is_ok()));
                outcome
            }
        })
        .start()
        .await
        .expect("runtime starts");
    let orders = rt.service().stream_name("orders").expect("name");
    let order = Order {
        id: 5,
        amount_cents: 10,
    };
    let service = rt.service();
    service
        .publish_json("orders", &order, PublishOptions::new())
        .await
        .expect("publish");
    service
        .publish_json(
            "orders",
            &order,
            PublishOptions::new().header("reject", "1"),
        )
        .await
        .expect("publish");
    let (billing, audit) = (
        format!("mw {orders} billing"),
        format!("mw {orders}.dead audit"),
    );
    probe
        .wait_for(
            "both messages through the middleware, one dead-lettered",
            |p| {
                p.count(&billing) == 2
                    && p.count("typed 5 10 1") == 1
                    && p.count(&audit) == 1
                    && p.count("dead from=")
                        == p.count(&format!(
                            "dead from={orders} attempts=1 reason=refused by the middleware"
                        ))
                    && p.count("dead from=") == 1
            },
        )
        .await;
    assert!(probe.count("mw after ok=true") >= 2, "{:?}", probe.events());
    rt.shutdown().await.expect("clean shutdown");
}

/// The next outcome a test handler reports, within 10 s.
async fn next(outcomes: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(10), outcomes.recv())
        .await
        .ok()
        .flatten()
        .expect("an outcome within 10s")
}

/// `Service::subscribe_with_publisher`: the handler gets a `Publisher` bound to the
/// subscription's namespace, and can still publish while the consumer drains at close.
pub(super) async fn handler_publishes_through_the_programmatic_api(url: String) {
    let app = format!("t{}", unique("pubapi").replace('-', ""));
    let service = Service::connect(&url, ServiceConfig::default().app(app.clone()))
        .await
        .expect("connect");
    let (sent, mut outcomes) = tokio::sync::mpsc::unbounded_channel::<String>();
    let (open, gate) = watch::channel(false);
    let fast = SubscribeOptions::new()
        .start(StartPosition::Earliest)
        .poll_interval(Duration::from_millis(20))
        .namespace("accounts");
    let tell = sent.clone();
    service
        .subscribe_with_publisher(
            "checkout",
            "invoicing",
            move |msg: Message, publisher: Publisher| {
                let (tell, mut gate) = (tell.clone(), gate.clone());
                async move {
                    if &msg.payload[..] == b"slow" {
                        let _ = tell.send("slow started".to_owned());
                        let _ = gate.wait_for(|open| *open).await;
                    }
                    let published = publisher
                        .publish("invoices", msg.payload.to_vec(), PublishOptions::new())
                        .await;
                    let _ = tell.send(format!("published: {}", published.is_ok()));
                    published?;
                    Ok(())
                }
            },
            fast.clone(),
        )
        .await
        .expect("subscribe");
    service
        .subscribe(
            "invoices",
            "mailing",
            move |msg: Message| {
                let sent = sent.clone();
                async move {
                    let text = String::from_utf8_lossy(&msg.payload).into_owned();
                    let _ = sent.send(format!("invoice {text} on {}", msg.stream));
                    Ok(())
                }
            },
            fast,
        )
        .await
        .expect("subscribe");
    let accounts = PublishOptions::new().namespace("accounts");
    service
        .publish("checkout", "order-1", accounts.clone())
        .await
        .expect("publish");
    // The reader may see the invoice before the publishing handler reports back.
    let mut two = [next(&mut outcomes).await, next(&mut outcomes).await];
    two.sort();
    assert_eq!(
        two,
        [
            format!("invoice order-1 on {app}.accounts.invoices"),
            "published: true".to_owned()
        ]
    );

    // A handler still running when close starts publishes during the drain.
    service
        .publish("checkout", "slow", accounts)
        .await
        .expect("publish");
    assert_eq!(next(&mut outcomes).await, "slow started");
    let closing = tokio::spawn({
        let service = service.clone();
        async move { service.close().await }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // Subscribing is refused as soon as close has started.
        let probe = service
            .subscribe("probe", "g", |_| async { Ok(()) }, SubscribeOptions::new())
            .await;
        if matches!(probe, Err(stream_runtime::Error::Closed)) {
            break;
        }
        assert!(Instant::now() < deadline, "close did not start");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    open.send_replace(true);
    // (The reader, still draining too, may or may not see that invoice first.)
    let mut outcome = next(&mut outcomes).await;
    while outcome.starts_with("invoice slow") {
        outcome = next(&mut outcomes).await;
    }
    assert_eq!(outcome, "published: true");
    let report = closing.await.expect("close task").expect("close");
    assert_eq!(report.aborted, 0);
    let after = service
        .publish("checkout", "late", PublishOptions::new())
        .await;
    assert!(
        matches!(after, Err(stream_runtime::Error::Closed)),
        "{after:?}"
    );
}
