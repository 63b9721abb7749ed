//! `streams dlq`: list, redrive and purge dead letters.

use super::*;

pub(crate) fn selection(target: &DlqTarget, choice: Option<&Choice>) -> Selection {
    let mut selection = match choice {
        Some(choice) if !choice.all => {
            Selection::ids(choice.ids.iter().map(|id| MessageId::new(id.as_str())))
        }
        _ => Selection::all(),
    };
    if let Some(group) = &target.group {
        selection = selection.group(group.as_str());
    }
    if let Some(dead) = &target.dead_letter {
        selection = selection.dead_letter(dead.as_str());
    }
    selection
}

pub(crate) async fn dlq_list(admin: &Admin, target: &DlqTarget, json: bool) -> Outcome {
    let letters = admin
        .dead_letters(&target.stream, &selection(target, None))
        .await?;
    if json {
        let rows: Vec<Value> = letters
            .iter()
            .map(|m| {
                let mut row = message_json(m);
                row["origin"] = json!(m.header(dlh::STREAM));
                row["group"] = json!(m.header(dlh::GROUP));
                row["attempts"] =
                    json!(m.header(dlh::ATTEMPTS).and_then(|a| a.parse::<u64>().ok()));
                row["reason"] = json!(m.header(dlh::REASON));
                row
            })
            .collect();
        return Ok(output::json(&Value::Array(rows))?);
    }
    let header = |m: &stream_runtime::Message, name: &str| {
        m.header(name).unwrap_or("-").escape_debug().to_string()
    };
    let rows: Vec<Vec<String>> = letters
        .iter()
        .map(|m| {
            vec![
                m.id.to_string(),
                relative(m.created_at),
                header(m, dlh::GROUP),
                header(m, dlh::ATTEMPTS),
                cut(&header(m, dlh::REASON), 60),
                cut(&output::payload_text(&m.payload), 60),
            ]
        })
        .collect();
    if rows.is_empty() {
        eprintln!(
            "no dead letters in {}",
            admin.dead_letter_stream(&target.stream, &selection(target, None))?
        );
        return Ok(());
    }
    Ok(output::table(
        &["ID", "AGE", "GROUP", "ATTEMPTS", "REASON", "PAYLOAD"],
        &rows,
    )?)
}

/// Asks before acting on more than one message, unless `--yes`.
pub(crate) fn confirm(what: &str, count: usize, yes: bool) -> Outcome {
    if count <= 1 || yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(Failure(format!(
            "this would {what} {count} dead letters; pass --yes to confirm (standard input is \
             not a terminal, so there is no one to ask)"
        )));
    }
    eprint!("{what} {count} dead letters? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|e| Failure(format!("reading the answer failed: {e}")))?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(Failure(format!(
            "not confirmed; nothing done (pass --yes to {what} without asking)"
        )))
    }
}

pub(crate) fn progress(count: usize) -> indicatif::ProgressBar {
    if count <= 1 {
        return indicatif::ProgressBar::hidden();
    }
    // Drawn on standard error, and only when it is a terminal.
    indicatif::ProgressBar::new(count as u64)
}

/// Chosen ids not found: an error after the rest is done.
pub(crate) fn missing(not_found: &[MessageId], dead_stream: &str) -> Outcome {
    if not_found.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = not_found.iter().map(MessageId::as_str).collect();
    Err(Failure(format!(
        "{dead_stream} holds no message {} (see `streams dlq list`)",
        ids.join(", ")
    )))
}

pub(crate) async fn dlq_redrive(
    admin: &Admin,
    target: &DlqTarget,
    choice: &Choice,
    yes: bool,
    json: bool,
) -> Outcome {
    let selection = selection(target, Some(choice));
    let dead_stream = admin.dead_letter_stream(&target.stream, &selection)?;
    let letters = admin.dead_letters(&target.stream, &selection).await?;
    let mut not_found = chosen_not_found(choice, &letters);
    confirm("redrive", letters.len(), yes)?;
    let bar = progress(letters.len());
    let (mut moved, mut skipped) = (Vec::new(), Vec::new());
    for letter in &letters {
        match admin.redrive_one(letter).await {
            Ok(Some(m)) => moved.push(m),
            Ok(None) => not_found.push(letter.id.clone()),
            Err(stream_runtime::Error::InvalidName { reason, .. }) => {
                skipped.push((letter.id.clone(), reason));
            }
            Err(e) => {
                bar.abandon();
                return Err(e.into());
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    if json {
        let rows: Vec<Value> = moved
            .iter()
            .map(|m| {
                json!({
                    "dead_letter_id": m.dead_letter_id.as_str(),
                    "stream": m.stream,
                    "id": m.id.as_str(),
                })
            })
            .collect();
        output::json(&Value::Array(rows))?;
    } else if moved.is_empty() {
        eprintln!("nothing redriven from {dead_stream}");
    } else {
        let rows: Vec<Vec<String>> = moved
            .iter()
            .map(|m| {
                vec![
                    m.dead_letter_id.to_string(),
                    m.stream.clone(),
                    m.id.to_string(),
                ]
            })
            .collect();
        output::table(&["DEAD LETTER", "MOVED TO", "NEW ID"], &rows)?;
    }
    for (id, reason) in &skipped {
        eprintln!("skipped {id}: {reason}");
    }
    missing(&not_found, &dead_stream)
}

pub(crate) fn chosen_not_found(
    choice: &Choice,
    letters: &[stream_runtime::Message],
) -> Vec<MessageId> {
    choice
        .ids
        .iter()
        .filter(|id| !letters.iter().any(|m| m.id.as_str() == id.as_str()))
        .map(|id| MessageId::new(id.as_str()))
        .collect()
}

/// Dead letters deleted per backend call.
pub(crate) const PURGE_CHUNK: usize = 100;

pub(crate) async fn dlq_purge(
    admin: &Admin,
    target: &DlqTarget,
    choice: &Choice,
    yes: bool,
    json: bool,
) -> Outcome {
    let selection = selection(target, Some(choice));
    let dead_stream = admin.dead_letter_stream(&target.stream, &selection)?;
    let letters = admin.dead_letters(&target.stream, &selection).await?;
    let not_found = chosen_not_found(choice, &letters);
    confirm("purge", letters.len(), yes)?;
    let bar = progress(letters.len());
    let ids: Vec<MessageId> = letters.into_iter().map(|m| m.id).collect();
    let mut deleted = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(PURGE_CHUNK) {
        match admin
            .delete_dead_letters(&target.stream, &selection, chunk)
            .await
        {
            Ok(ids) => deleted.extend(ids),
            Err(e) => {
                bar.abandon();
                return Err(e.into());
            }
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let gone = ids.len() - deleted.len();
    if gone > 0 {
        eprintln!("{gone} dead letter(s) were gone before they could be deleted (redriven or purged by someone else)");
    }
    if json {
        output::json(&json!(deleted
            .iter()
            .map(MessageId::as_str)
            .collect::<Vec<_>>()))?;
    } else {
        println!(
            "deleted {} dead letter(s) from {dead_stream}",
            deleted.len()
        );
    }
    missing(&not_found, &dead_stream)
}
