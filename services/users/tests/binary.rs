//! The `users` binary refuses to start without a usable `JWT_SECRET`.

use std::process::Command;

#[test]
fn needs_a_jwt_secret() {
    let run = |secret: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_users"));
        cmd.env_clear().env("PORT", "1");
        if let Some(s) = secret {
            cmd.env("JWT_SECRET", s);
        }
        cmd.output().unwrap()
    };
    let missing = run(None);
    assert_eq!(missing.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("JWT_SECRET is required"), "{stderr}");
    let short = run(Some("tooshort"));
    assert_eq!(short.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&short.stderr);
    assert!(
        stderr.contains("JWT_SECRET") && !stderr.contains("tooshort"),
        "{stderr}"
    );
}
