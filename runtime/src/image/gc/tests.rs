//! The planner's rules on plain values: one rendering of each plan, checked as a snapshot.

use std::collections::BTreeSet;
use std::time::Duration;

use expect_test::{expect, Expect};

use super::{plan, plan_all, FsUsage, GcImage, GcInput, GcPlan, GcPolicy, Reason};

const HOUR: u64 = 3_600_000;
const MIN: u64 = 60_000;
/// "Now" in the tests: a day count far from the epoch, so ages never saturate by accident.
const NOW: u64 = 1000 * 24 * HOUR;

/// An image of `mb` megabytes in one layer of its own, added and last used so long ago.
fn image(name: &str, mb: u64, added_ago: u64, used_ago: Option<u64>) -> GcImage {
    GcImage {
        id: format!("sha256:{name}"),
        names: vec![format!("{name}:1")],
        size: mb << 20,
        added_ms: NOW - added_ago,
        last_used_ms: used_ago.map(|ago| NOW - ago),
        parts: vec![(format!("layer-{name}"), mb << 20)],
    }
}

/// `image`, plus a part shared with other images.
fn sharing(mut image: GcImage, part: &str, mb: u64) -> GcImage {
    image.parts.push((part.to_owned(), mb << 20));
    image
}

fn ids(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| format!("sha256:{n}")).collect()
}

/// A disk of 100 MiB with `used` MiB in use.
fn disk(used_mb: u64) -> FsUsage {
    FsUsage { used: used_mb << 20, total: 100 << 20 }
}

fn render(plan: &GcPlan) -> String {
    let mut out = String::new();
    for d in &plan.deletions {
        let reason = match d.reason {
            Reason::MaxAge => "max-age".to_owned(),
            Reason::DiskPressure { spared: false } => "disk-pressure".to_owned(),
            Reason::DiskPressure { spared: true } => "disk-pressure (spared)".to_owned(),
            Reason::Pruned => "pruned".to_owned(),
        };
        out.push_str(&format!(
            "delete {} {reason}, unused {}m, frees {} MiB\n",
            d.id.trim_start_matches("sha256:"),
            d.unused_ms / MIN,
            d.freed >> 20
        ));
    }
    match plan.pressure {
        Some(p) => out.push_str(&format!(
            "pressure {}%: wanted {} MiB, frees {} MiB{}\n",
            p.percent,
            p.wanted >> 20,
            p.freed >> 20,
            if p.short() { " (short)" } else { "" }
        )),
        None => out.push_str("no pressure\n"),
    }
    out
}

fn check(images: &[GcImage], in_use: &[&str], spare: &[&str], usage: FsUsage, expect: Expect) {
    check_with(images, in_use, spare, usage, &GcPolicy::default(), expect);
}

fn check_with(
    images: &[GcImage],
    in_use: &[&str],
    spare: &[&str],
    usage: FsUsage,
    policy: &GcPolicy,
    expect: Expect,
) {
    let (in_use, spare) = (ids(in_use), ids(spare));
    let input = GcInput { images, in_use: &in_use, spare: &spare, usage };
    expect.assert_eq(&render(&plan(&input, policy, NOW)));
}

#[test]
fn nothing_to_do_below_the_threshold_and_within_max_age() {
    let images = [image("a", 10, 5 * HOUR, None), image("b", 10, 30 * HOUR, Some(HOUR))];
    check(
        &images,
        &[],
        &[],
        disk(84),
        expect![[r#"
        no pressure
    "#]],
    );
}

#[test]
fn max_age_deletes_long_unused_images_oldest_first() {
    let images = [
        image("recent", 10, 48 * HOUR, Some(23 * HOUR)),
        image("newer", 10, 30 * HOUR, Some(25 * HOUR)),
        image("older", 10, 50 * HOUR, Some(40 * HOUR)),
        image("never-used", 10, 26 * HOUR, None),
    ];
    check(
        &images,
        &[],
        &[],
        disk(10),
        expect![[r#"
        delete older max-age, unused 2400m, frees 10 MiB
        delete never-used max-age, unused 1560m, frees 10 MiB
        delete newer max-age, unused 1500m, frees 10 MiB
        no pressure
    "#]],
    );
}

#[test]
fn max_age_spares_images_workloads_name_and_never_touches_images_in_use() {
    let images = [image("named", 10, 50 * HOUR, None), image("running", 10, 50 * HOUR, Some(30 * HOUR))];
    check(
        &images,
        &["running"],
        &["named"],
        disk(10),
        expect![[r#"
        no pressure
    "#]],
    );
}

#[test]
fn zero_max_age_turns_the_rule_off() {
    let images = [image("old", 10, 500 * HOUR, None)];
    let policy = GcPolicy { max_age: Duration::ZERO, ..GcPolicy::default() };
    check_with(
        &images,
        &[],
        &[],
        disk(10),
        &policy,
        expect![[r#"
        no pressure
    "#]],
    );
}

#[test]
fn min_age_protects_a_fresh_pull_from_every_rule() {
    // Added a minute ago (a pull that no container uses yet), the disk full: it stays,
    // and the plan says it came up short.
    let images = [image("fresh", 50, MIN, None)];
    let policy = GcPolicy { max_age: Duration::from_secs(1), ..GcPolicy::default() };
    check_with(
        &images,
        &[],
        &[],
        disk(95),
        &policy,
        expect![[r#"
        pressure 95%: wanted 15 MiB, frees 0 MiB (short)
    "#]],
    );
    // Past the minimum age it goes.
    let images = [image("fresh", 50, 3 * MIN, None)];
    check_with(
        &images,
        &[],
        &[],
        disk(95),
        &policy,
        expect![[r#"
        delete fresh max-age, unused 3m, frees 50 MiB
        pressure 95%: wanted 15 MiB, frees 50 MiB
    "#]],
    );
}

#[test]
fn disk_pressure_deletes_least_recently_used_until_the_low_threshold() {
    let images = [
        image("a", 6, 10 * HOUR, Some(3 * HOUR)),
        image("b", 6, 10 * HOUR, Some(5 * HOUR)),
        image("c", 6, 10 * HOUR, Some(HOUR)),
        image("d", 6, 10 * HOUR, Some(4 * HOUR)),
    ];
    // 90 % used, low threshold 80 %: 10 MiB to free, two 6 MiB images do it.
    check(
        &images,
        &[],
        &[],
        disk(90),
        expect![[r#"
        delete b disk-pressure, unused 300m, frees 6 MiB
        delete d disk-pressure, unused 240m, frees 6 MiB
        pressure 90%: wanted 10 MiB, frees 12 MiB
    "#]],
    );
}

#[test]
fn disk_pressure_starts_at_the_high_threshold_not_below() {
    let images = [image("a", 6, 10 * HOUR, None)];
    check(
        &images,
        &[],
        &[],
        disk(84),
        expect![[r#"
        no pressure
    "#]],
    );
    check(
        &images,
        &[],
        &[],
        disk(85),
        expect![[r#"
        delete a disk-pressure, unused 600m, frees 6 MiB
        pressure 85%: wanted 5 MiB, frees 6 MiB
    "#]],
    );
    // 100 turns it off.
    let policy = GcPolicy { high_percent: 100, ..GcPolicy::default() };
    check_with(
        &images,
        &[],
        &[],
        disk(99),
        &policy,
        expect![[r#"
        no pressure
    "#]],
    );
}

#[test]
fn disk_pressure_takes_spared_images_only_when_the_rest_is_not_enough() {
    let images = [
        image("named-old", 10, 10 * HOUR, Some(9 * HOUR)),
        image("named-new", 10, 10 * HOUR, Some(2 * HOUR)),
        image("unnamed", 5, 10 * HOUR, Some(HOUR)),
        image("running", 30, 10 * HOUR, Some(8 * HOUR)),
    ];
    // 12 MiB to free: the unnamed image (most recently used, yet not spared) goes first,
    // then the least recently used named one; the running one never.
    check(
        &images,
        &["running"],
        &["named-old", "named-new"],
        disk(92),
        expect![[r#"
        delete unnamed disk-pressure, unused 60m, frees 5 MiB
        delete named-old disk-pressure (spared), unused 540m, frees 10 MiB
        pressure 92%: wanted 12 MiB, frees 15 MiB
    "#]],
    );
    // Enough without them: the spared images stay.
    check(
        &images,
        &["running"],
        &["named-old", "named-new"],
        disk(85),
        expect![[r#"
        delete unnamed disk-pressure, unused 60m, frees 5 MiB
        pressure 85%: wanted 5 MiB, frees 5 MiB
    "#]],
    );
}

#[test]
fn max_age_deletions_count_towards_the_pressure_target() {
    let images =
        [image("expired", 20, 50 * HOUR, Some(30 * HOUR)), image("lru", 20, 10 * HOUR, Some(2 * HOUR))];
    check(
        &images,
        &[],
        &[],
        disk(95),
        expect![[r#"
        delete expired max-age, unused 1800m, frees 20 MiB
        pressure 95%: wanted 15 MiB, frees 20 MiB
    "#]],
    );
}

#[test]
fn shared_parts_are_freed_by_the_last_image_that_has_them() {
    let images = [
        sharing(image("a", 2, 10 * HOUR, Some(5 * HOUR)), "base", 20),
        sharing(image("b", 2, 10 * HOUR, Some(4 * HOUR)), "base", 20),
        sharing(image("kept", 2, 10 * HOUR, Some(HOUR)), "other", 20),
    ];
    // 10 MiB to free: a frees its own 2 MiB, b its own and the base they shared.
    check(
        &images,
        &["kept"],
        &[],
        disk(90),
        expect![[r#"
        delete a disk-pressure, unused 300m, frees 2 MiB
        delete b disk-pressure, unused 240m, frees 22 MiB
        pressure 90%: wanted 10 MiB, frees 24 MiB
    "#]],
    );
    // A base a running image also has is never freed: the plan comes up short.
    let images = [
        sharing(image("a", 2, 10 * HOUR, Some(5 * HOUR)), "base", 20),
        sharing(image("running", 2, 10 * HOUR, Some(HOUR)), "base", 20),
    ];
    check(
        &images,
        &["running"],
        &[],
        disk(90),
        expect![[r#"
        delete a disk-pressure, unused 300m, frees 2 MiB
        pressure 90%: wanted 10 MiB, frees 2 MiB (short)
    "#]],
    );
}

#[test]
fn a_clock_that_went_back_makes_images_look_fresh() {
    // Stamps in the future (the clock was set back): nothing counts as old.
    let mut future = image("future", 10, 0, None);
    future.added_ms = NOW + 100 * HOUR;
    check(
        &[future],
        &[],
        &[],
        disk(99),
        expect![[r#"
        pressure 99%: wanted 19 MiB, frees 0 MiB (short)
    "#]],
    );
}

#[test]
fn prune_all_takes_every_image_not_in_use_whatever_its_age_or_name() {
    let images = [
        image("fresh", 1, MIN / 2, None),
        image("named", 1, 10 * HOUR, Some(HOUR)),
        image("running", 1, 10 * HOUR, Some(HOUR)),
        image("old", 1, 40 * HOUR, None),
    ];
    let in_use = ids(&["running"]);
    expect![[r#"
        delete old pruned, unused 2400m, frees 1 MiB
        delete named pruned, unused 60m, frees 1 MiB
        delete fresh pruned, unused 0m, frees 1 MiB
        no pressure
    "#]]
    .assert_eq(&render(&plan_all(&images, &in_use, NOW)));
}

#[test]
fn usage_percent_rounds_up_and_policy_validation_names_the_threshold() {
    assert_eq!(FsUsage { used: 842, total: 1000 }.percent(), 85);
    assert_eq!(FsUsage { used: 0, total: 0 }.percent(), 0);
    let bad = GcPolicy { high_percent: 70, low_percent: 80, ..GcPolicy::default() };
    assert_eq!(bad.validate().expect_err("invalid"), "low threshold 80% is above the high threshold 70%");
    let bad = GcPolicy { high_percent: 101, ..GcPolicy::default() };
    assert_eq!(bad.validate().expect_err("invalid"), "high threshold 101% is above 100%");
    assert_eq!(GcPolicy::default().validate(), Ok(()));
}
