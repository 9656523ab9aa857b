//! Every command the server lists has been reviewed: namespaced (by its key specs or by a rule
//! of prodbox's), harmless, or refused. A newer server's new commands fail this test (and are
//! refused to sandboxes) until someone decides what they are.

mod common;

use prodbox_redis::plumbing::classify;
use redis::Value;

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// Every command and subcommand, with whether the server gives it key specs and whether those
/// say where every key is.
fn walk(entry: &Value, out: &mut Vec<(String, bool, bool)>) {
    let Value::Array(fields) = entry else { return };
    let name = fields
        .first()
        .and_then(text)
        .unwrap_or_default()
        .to_ascii_lowercase();
    let specs = match fields.get(8) {
        Some(Value::Array(specs)) => specs.clone(),
        _ => Vec::new(),
    };
    let complete = specs.iter().all(|spec| {
        let rendered = format!("{spec:?}");
        !rendered.contains("unknown")
    });
    out.push((name, !specs.is_empty(), complete));
    if let Some(Value::Array(subs)) = fields.get(9) {
        for sub in subs {
            walk(sub, out);
        }
    }
}

#[tokio::test]
async fn every_command_of_the_server_is_reviewed() {
    let reply: Value = redis::cmd("COMMAND")
        .query_async(&mut common::raw().await)
        .await
        .expect("COMMAND");
    let Value::Array(entries) = reply else {
        panic!("COMMAND answered {reply:?}")
    };
    let mut all = Vec::new();
    for entry in &entries {
        walk(entry, &mut all);
    }
    assert!(all.len() > 200, "{} commands", all.len());
    let mut unreviewed = Vec::new();
    let mut keyed_without_specs = Vec::new();
    for (name, has_specs, complete) in &all {
        // A container is reviewed through its subcommands.
        let container = all
            .iter()
            .any(|(sub, ..)| sub.starts_with(&format!("{name}|")));
        match classify(name) {
            None if !container => unreviewed.push(name.clone()),
            Some("keys") if !has_specs || !complete => keyed_without_specs.push(name.clone()),
            _ => {}
        }
    }
    assert!(
        unreviewed.is_empty(),
        "commands no list names: {unreviewed:?}"
    );
    assert!(
        keyed_without_specs.is_empty(),
        "namespaced by key specs that do not name every key: {keyed_without_specs:?}"
    );
}

/// The sandbox's ACL user may run exactly what prodbox sends for it: every command prodbox
/// refuses is missing from its rules.
#[tokio::test]
async fn the_sandbox_user_may_run_no_refused_command() {
    let redis = common::handle().await;
    let s = common::sandbox("acl");
    common::in_sandbox(&s, async {
        let () = redis::AsyncCommands::set(&mut redis.clone(), "k", 1)
            .await
            .expect("SET");
    })
    .await;
    let described: Value = redis::cmd("ACL")
        .arg("GETUSER")
        .arg(prodbox_redis::names::user(s.key()))
        .query_async(&mut common::raw().await)
        .await
        .expect("ACL GETUSER");
    let rendered = format!("{described:?}");
    // Redis writes the rules back compacted (`+@string -keys ...`): compare whole tokens.
    let rules: Vec<&str> = rendered
        .split(|c: char| c.is_whitespace() || c == '"' || c == '\'')
        .filter(|t| t.starts_with('+') || t.starts_with('-'))
        .collect();
    for refused in [
        "+flushall",
        "+flushdb",
        "+config",
        "+config|set",
        "+select",
        "+keys",
        "+randomkey",
        "+dbsize",
        "+debug",
        "+migrate",
        "+move",
        "+swapdb",
        "+client",
        "+client|kill",
        "+client|list",
        "+acl",
        "+acl|setuser",
        "+info",
        "+shutdown",
        "+script",
        "+script|flush",
        "+function",
        "+function|load",
        "+monitor",
        "+@all",
        "+@dangerous",
        "+@admin",
    ] {
        assert!(!rules.contains(&refused), "{refused} in {rules:?}");
    }
    assert!(rules.contains(&"-@all"), "{rules:?}");
    assert!(
        rendered.contains(&format!("~{}*", prodbox_redis::names::prefix(s.key()))),
        "{rendered}"
    );
    redis.teardown(s.key()).await.expect("teardown");
}
