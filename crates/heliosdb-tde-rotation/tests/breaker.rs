//! The re-wrap pass's circuit breaker (`RotationConfig::abort_after_consecutive_failures`)
//! against real parts: the in-memory provider behind the `Instrumented` decorator, which makes
//! the outage, and a redb store.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::World;
use heliosdb_tde_conformance::instrumented::Method;
use heliosdb_tde_core::{TdeError, TekId};
use heliosdb_tde_rotation::{Phase, Rotator};

const THRESHOLD: u32 = 8;
const CONCURRENCY: usize = 4;

fn outage() -> TdeError {
    TdeError::ProviderUnavailable {
        provider: "test".into(),
        reason: "connection refused".into(),
        retryable: true,
    }
}

fn rotator(w: &World) -> Rotator {
    let config = common::config()
        .with_batch_size(50)
        .with_concurrency(CONCURRENCY)
        .with_max_attempts(5)
        .with_abort_after_consecutive_failures(THRESHOLD);
    Rotator::new(w.provider.clone(), w.store.clone(), config)
}

#[test]
fn the_default_threshold_is_32() {
    let c = heliosdb_tde_rotation::RotationConfig::default();
    assert_eq!(c.abort_after_consecutive_failures, 32);
    assert_eq!(
        c.with_abort_after_consecutive_failures(3)
            .abort_after_consecutive_failures,
        3
    );
}

#[tokio::test]
async fn an_outage_mid_pass_pauses_after_the_threshold_and_the_same_command_resumes() {
    let p = common::hooked();
    let w = World::new(p.clone(), 300).await;
    let rot = rotator(&w);
    rot.prepare(&w.mek_id, false).await.unwrap();

    // The provider goes away after 120 re-wraps: two pages of 50 and 20 TEKs of the third.
    p.reset_counts();
    p.fail_when(Method::RewrapTek, |call| (call.n > 120).then(outage));
    let e = rot.rewrap(&w.mek_id, None).await.unwrap_err();
    assert!(
        matches!(
            e,
            TdeError::ProviderUnavailable {
                retryable: true,
                ..
            }
        ),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(text.contains("paused"), "{text}");
    assert!(text.contains("same command"), "{text}");
    assert!(text.contains("connection refused"), "{text}");
    // Paused quickly: the calls that succeeded plus about the threshold, not
    // `max_attempts` calls for each of the 180 remaining TEKs.
    let calls = p.calls(Method::RewrapTek);
    assert!(
        calls <= 120 + u64::from(THRESHOLD) + CONCURRENCY as u64,
        "{calls} re-wrap calls during the outage"
    );
    assert!(calls >= 120 + u64::from(THRESHOLD), "{calls}");

    // The journal: still re-wrapping, cursor at the last committed page, nothing failed, and
    // the re-wraps of the interrupted page that succeeded committed.
    let st = rot.status(&w.mek_id).await.unwrap().unwrap();
    assert_eq!(st.phase, Phase::Rewrapping);
    let hundredth: TekId = "t00099@v1".parse().unwrap();
    assert_eq!(st.cursor, Some(hundredth));
    assert_eq!(st.failed_total, 0, "{:?}", st.failed);
    assert_eq!(st.reencrypted, 120);
    let new = st.new.clone().unwrap();
    assert_eq!(w.check_all_unwrap(&new).await, 120);

    // The provider is back: the same command finishes, re-wrapping each remaining TEK once.
    p.clear(Method::RewrapTek);
    p.reset_counts();
    let st = rot.rewrap(&w.mek_id, None).await.unwrap();
    assert_eq!(st.phase, Phase::DualActive);
    assert_eq!(st.failed_total, 0, "{:?}", st.failed);
    assert_eq!(st.reencrypted, 300);
    assert_eq!(
        p.calls(Method::RewrapTek),
        180,
        "no TEK is re-wrapped twice"
    );
    assert_eq!(w.check_all_unwrap(&new).await, 300);
    assert_eq!(rot.verify(&w.mek_id).await.unwrap().stranded, 0);
}

#[tokio::test]
async fn an_outage_from_the_start_commits_nothing_and_leaves_the_cursor_unset() {
    let p = common::hooked();
    let w = World::new(p.clone(), 100).await;
    let rot = rotator(&w);
    rot.prepare(&w.mek_id, false).await.unwrap();
    p.reset_counts();
    p.fail_when(Method::RewrapTek, |_| Some(outage()));
    let e = rot.rewrap(&w.mek_id, None).await.unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert!(p.calls(Method::RewrapTek) <= u64::from(THRESHOLD) + CONCURRENCY as u64);
    let st = rot.status(&w.mek_id).await.unwrap().unwrap();
    assert_eq!((st.phase, st.cursor.clone()), (Phase::Rewrapping, None));
    assert_eq!((st.reencrypted, st.failed_total), (0, 0));
    // Still down: the same command pauses again, as quickly.
    p.reset_counts();
    assert!(
        rot.rewrap(&w.mek_id, None)
            .await
            .unwrap_err()
            .is_retryable()
    );
    assert!(p.calls(Method::RewrapTek) <= u64::from(THRESHOLD) + CONCURRENCY as u64);
    p.clear(Method::RewrapTek);
    let st = rot.rewrap(&w.mek_id, None).await.unwrap();
    assert_eq!((st.phase, st.reencrypted), (Phase::DualActive, 100));
    assert_eq!(w.check_all_unwrap(st.new.as_ref().unwrap()).await, 100);
}

#[tokio::test]
async fn non_retryable_failures_do_not_trip_the_breaker_and_are_recorded_per_tek() {
    let p = common::hooked();
    let w = World::new(p.clone(), 120).await;
    let rot = rotator(&w);
    rot.prepare(&w.mek_id, false).await.unwrap();
    // 40 TEKs in a row (five times the threshold) are refused for good.
    p.fail_when(Method::RewrapTek, |call| {
        let n: u32 = call.table().trim_start_matches('t').parse().unwrap();
        (10..50).contains(&n).then(|| TdeError::Provider {
            provider: "test".into(),
            message: format!("refusing {}", call.table()),
            hint: String::new(),
        })
    });
    let st = rot.rewrap(&w.mek_id, None).await.unwrap();
    assert_eq!(st.phase, Phase::DualActive);
    assert_eq!(st.failed_total, 40);
    assert_eq!(st.reencrypted, 80);
    assert!(st.failed.iter().all(|(_, e)| e.contains("refusing")));
    p.clear(Method::RewrapTek);
    let st = rot.rewrap(&w.mek_id, None).await.unwrap();
    assert_eq!((st.failed_total, st.reencrypted), (0, 120));
}

#[tokio::test]
async fn keys_failing_as_an_outage_starts_at_the_end_of_a_page_are_retried_on_resume() {
    let p = common::hooked();
    let w = World::new(p.clone(), 100).await;
    // One re-wrap at a time, two attempts each: the last two TEKs of the first page use up
    // their attempts (4 failures, under the threshold) before the breaker opens in the next
    // page.
    let config = common::config()
        .with_batch_size(50)
        .with_concurrency(1)
        .with_max_attempts(2)
        .with_abort_after_consecutive_failures(THRESHOLD);
    let rot = Rotator::new(w.provider.clone(), w.store.clone(), config);
    rot.prepare(&w.mek_id, false).await.unwrap();
    p.reset_counts();
    p.fail_when(Method::RewrapTek, |call| (call.n > 48).then(outage));
    let e = rot.rewrap(&w.mek_id, None).await.unwrap_err();
    assert!(e.to_string().contains("paused"), "{e}");
    assert_eq!(p.calls(Method::RewrapTek), 48 + u64::from(THRESHOLD));
    let st = rot.status(&w.mek_id).await.unwrap().unwrap();
    assert_eq!(st.phase, Phase::Rewrapping);
    assert_eq!(st.failed_total, 0, "{:?}", st.failed);
    assert_eq!(st.reencrypted, 48);
    assert_eq!(st.cursor, None, "the first page ended inside the outage");

    p.clear(Method::RewrapTek);
    p.reset_counts();
    let st = rot.rewrap(&w.mek_id, None).await.unwrap();
    assert_eq!(st.phase, Phase::DualActive);
    assert_eq!(
        (st.failed_total, st.reencrypted),
        (0, 100),
        "{:?}",
        st.failed
    );
    assert_eq!(p.calls(Method::RewrapTek), 52, "no TEK is re-wrapped twice");
    assert_eq!(w.check_all_unwrap(st.new.as_ref().unwrap()).await, 100);
}

#[tokio::test]
async fn a_short_outage_that_does_not_trip_the_breaker_fails_only_its_keys() {
    let p = common::hooked();
    let w = World::new(p.clone(), 100).await;
    let config = common::config()
        .with_batch_size(50)
        .with_concurrency(1)
        .with_max_attempts(2)
        .with_abort_after_consecutive_failures(THRESHOLD);
    let rot = Rotator::new(w.provider.clone(), w.store.clone(), config);
    rot.prepare(&w.mek_id, false).await.unwrap();
    p.reset_counts();
    // Calls 49..=52 fail: the last two TEKs of the first page, then the provider is back.
    p.fail_when(Method::RewrapTek, |call| {
        (49..=52).contains(&call.n).then(outage)
    });
    let st = rot.rewrap(&w.mek_id, None).await.unwrap();
    assert_eq!(st.phase, Phase::DualActive);
    assert_eq!(
        (st.failed_total, st.reencrypted),
        (2, 98),
        "{:?}",
        st.failed
    );
    p.clear(Method::RewrapTek);
    let st = rot.rewrap(&w.mek_id, None).await.unwrap();
    assert_eq!((st.failed_total, st.reencrypted), (0, 100));
}
