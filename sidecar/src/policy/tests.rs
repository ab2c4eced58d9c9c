//! Hot reload against real files (the format itself is tested in
//! `sametag-policy`).

use std::sync::Arc;
use std::time::Duration;

use super::*;

#[tokio::test(flavor = "current_thread")]
async fn hot_reload_swaps_valid_files_and_keeps_the_old_on_errors() {
    let dir = std::env::temp_dir().join(format!("sametag-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("policy.yaml");
    std::fs::write(&f, "mode: Validate\n").unwrap();
    let handle = PolicyHandle::load(&f).unwrap();
    let mut changes = handle.subscribe();
    let task = handle.watch(&f, Duration::from_millis(20));
    let wait = |rx: &mut tokio::sync::watch::Receiver<Arc<Policy>>| {
        let mut rx = rx.clone();
        async move { tokio::time::timeout(Duration::from_secs(5), rx.changed()).await }
    };

    // A valid change is picked up.
    std::fs::write(&f, "mode: Trust\n").unwrap();
    wait(&mut changes).await.unwrap().unwrap();
    changes.mark_unchanged();
    assert_eq!(handle.current().route("/").mode, Mode::Trust);

    // An invalid one is not; the old policy stays.
    std::fs::write(&f, "mode: Sometimes\n").unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(handle.current().route("/").mode, Mode::Trust);

    // A ConfigMap-style symlink swap is followed.
    let data = dir.join("data-2");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("policy.yaml"), "mode: Bypass\n").unwrap();
    let tmp = dir.join("policy.tmp");
    std::os::unix::fs::symlink(data.join("policy.yaml"), &tmp).unwrap();
    std::fs::rename(&tmp, &f).unwrap();
    wait(&mut changes).await.unwrap().unwrap();
    assert_eq!(handle.current().route("/").mode, Mode::Bypass);

    // The task ends once every handle is gone.
    drop(handle);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
