//! Independent stages run at the same time, bounded by `--jobs`; the first
//! failure stops the build with that failure's report.

mod common;

use std::process::Output;

use common::{ok, Fixture};

/// Two stages that each record when their RUN started and ended (the host's
/// uptime, which every sandbox reads alike), and a final stage printing the
/// four times.
const TWO_STAGES: &str = "FROM base AS a\n\
    RUN cut -d' ' -f1 /proc/uptime > /start && sleep 1 && cut -d' ' -f1 /proc/uptime > /end\n\
    FROM base AS b\n\
    RUN cut -d' ' -f1 /proc/uptime > /start && sleep 1 && cut -d' ' -f1 /proc/uptime > /end\n\
    FROM base\n\
    COPY --from=a /start /a-start\n\
    COPY --from=a /end /a-end\n\
    COPY --from=b /start /b-start\n\
    COPY --from=b /end /b-end\n\
    RUN echo \"times $(cat /a-start) $(cat /a-end) $(cat /b-start) $(cat /b-end)\"\n";

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The (start, end) intervals of stages a and b, from the final RUN's line.
fn intervals(log: &str) -> ((f64, f64), (f64, f64)) {
    let line = log
        .lines()
        .find_map(|l| l.split_once(" times ").map(|(_, t)| t.to_string()))
        .unwrap_or_else(|| panic!("no times in the log:\n{log}"));
    let t: Vec<f64> = line
        .split_whitespace()
        .map(|v| v.parse().expect("an uptime"))
        .collect();
    assert_eq!(t.len(), 4, "{line}");
    ((t[0], t[1]), (t[2], t[3]))
}

fn overlap(a: (f64, f64), b: (f64, f64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

#[test]
fn independent_stages_overlap_in_time() {
    let f = Fixture::new("parallel");
    f.file("Dockerfile", TWO_STAGES.as_bytes());
    let out = f.forge_build(&["--jobs", "2"]);
    let log = stderr(&out);
    ok(&out);
    let (a, b) = intervals(&log);
    assert!(
        a.1 - a.0 >= 0.9 && b.1 - b.0 >= 0.9,
        "each RUN sleeps 1 s: {a:?} {b:?}"
    );
    assert!(
        overlap(a, b),
        "the two stages' RUNs did not overlap: {a:?} {b:?}\n{log}"
    );
    // Progress numbers are the sequential build's, whatever ran first: each
    // stage's FROM, then its steps.
    for expected in [
        "#1 [a 1/2] FROM base",
        "#3 [b 1/2] FROM base",
        "#5 [stage-2 1/6] FROM base",
    ] {
        assert!(log.contains(expected), "{expected:?} missing:\n{log}");
    }
}

#[test]
fn one_job_runs_one_step_at_a_time() {
    let f = Fixture::new("parallel-one");
    f.file("Dockerfile", TWO_STAGES.as_bytes());
    let out = f.forge_build(&["--jobs", "1"]);
    let log = stderr(&out);
    ok(&out);
    let (a, b) = intervals(&log);
    assert!(
        !overlap(a, b),
        "with --jobs 1 the RUNs overlapped: {a:?} {b:?}\n{log}"
    );
}

#[test]
fn the_first_failure_stops_the_build_with_its_own_report() {
    let f = Fixture::new("parallel-fail");
    f.file(
        "Dockerfile",
        b"FROM base AS slow\n\
          RUN sleep 2\n\
          RUN echo after > /after\n\
          FROM base AS broken\n\
          RUN echo failing && exit 3\n\
          FROM base\n\
          COPY --from=slow /after /after\n\
          COPY --from=broken /etc/passwd /p\n",
    );
    let out = f.forge_build(&["--jobs", "2"]);
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("RUN echo failing && exit 3"), "{log}");
    assert!(log.contains("exit code: 3"), "{log}");
    assert!(!log.contains("another stage of the build failed"), "{log}");
    // The slow stage's running step was stopped, its next one never began.
    assert!(!log.contains("[slow 3/3]"), "{log}");
    assert!(log.contains("#2 [slow 2/3] RUN sleep 2"), "{log}");
    assert!(!log.contains("#2 DONE"), "`sleep 2` ran to its end: {log}");
}
