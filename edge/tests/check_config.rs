//! `--check-config` loads the certificates and keys a configuration names, as `nginx -t` does:
//! a missing or unreadable file is exit 64 naming the field (before the fix it said "ok").

use std::process::Command;

use shake_testkit::processes::bin;
use shake_testkit::scratch::Scratch;

const EXAMPLE: &str = include_str!("../shake-edge.example.toml");

/// Writes `text` as `name` in the scratch directory and checks it.
fn check(scratch: &Scratch, name: &str, text: &str) -> (Option<i32>, String) {
    let path = scratch.dir.join(name);
    std::fs::write(&path, text).unwrap();
    let out = Command::new(bin("shake-edge")).arg("--check-config").arg(&path).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

#[test]
fn check_config_loads_every_tls_file_and_names_the_field() {
    let scratch = Scratch::new("edge-check");
    let certs = scratch.certs().display().to_string();
    let good = EXAMPLE.replace("target/demo/certs", &certs);
    let (code, out) = check(&scratch, "good.toml", &good);
    assert_eq!(code, Some(0), "{out}");

    let cases = [
        ("tls.cert", "cert = \"CERTS/edge-1.pem\"\nkey", "cert = \"/nonexistent/edge.pem\"\nkey"),
        (
            "tls.key",
            "key = \"CERTS/edge-1.key\"\n\n[allocator]",
            "key = \"/nonexistent/edge.key\"\n\n[allocator]",
        ),
        ("allocator.ca", "ca = \"CERTS/ca.pem\"", "ca = \"/nonexistent/ca.pem\""),
    ];
    for (field, from, to) in cases {
        let from = from.replace("CERTS", &certs);
        assert!(good.contains(&from), "{field}: the example changed");
        let (code, out) = check(&scratch, "bad.toml", &good.replacen(&from, to, 1));
        assert_eq!(code, Some(64), "{field}: {out}");
        assert!(out.contains(&format!("`{field}`")), "{field} not named: {out}");
    }
    // A key file that is not a key.
    let swapped = good.replacen(
        &format!("key = \"{certs}/edge-1.key\""),
        &format!("key = \"{certs}/edge-1.pem\""),
        1,
    );
    let (code, out) = check(&scratch, "swapped.toml", &swapped);
    assert_eq!(code, Some(64), "{out}");
    assert!(out.contains("`tls.key`"), "{out}");
}

/// `users_token_file` is read at the check, as at the start: a token too short to be a secret,
/// or a file that is not there, is exit 64 naming it; and it is served on `metrics_listen`,
/// which it needs.
#[test]
fn check_config_reads_the_users_token_and_names_the_field() {
    let scratch = Scratch::new("edge-check-users-token");
    let certs = scratch.certs().display().to_string();
    let token = scratch.dir.join("users.token");
    let with_token = EXAMPLE.replace("target/demo/certs", &certs).replacen(
        "\nmetrics_listen = ",
        &format!("\nusers_token_file = \"{}\"\nmetrics_listen = ", token.display()),
        1,
    );
    assert!(with_token.contains("users_token_file"), "the example changed");
    std::fs::write(&token, "a-token-of-sixteen-bytes\n").unwrap();
    let (code, out) = check(&scratch, "good.toml", &with_token);
    assert_eq!(code, Some(0), "{out}");

    std::fs::write(&token, "short\n").unwrap();
    let (code, out) = check(&scratch, "short.toml", &with_token);
    assert_eq!(code, Some(64), "{out}");
    assert!(out.contains("`users_token_file`") && out.contains("16 bytes"), "{out}");
    std::fs::remove_file(&token).unwrap();
    let (code, out) = check(&scratch, "missing.toml", &with_token);
    assert_eq!(code, Some(64), "{out}");
    assert!(out.contains("`users_token_file`"), "{out}");

    std::fs::write(&token, "a-token-of-sixteen-bytes\n").unwrap();
    let metrics = with_token.lines().find(|l| l.starts_with("metrics_listen")).unwrap();
    let (code, out) = check(&scratch, "no-metrics.toml", &with_token.replacen(metrics, "", 1));
    assert_eq!(code, Some(64), "{out}");
    assert!(out.contains("`users_token_file`"), "{out}");
}
