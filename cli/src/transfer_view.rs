//! docker's per-layer view of a pull or push on a terminal: a bar per blob
//! (`Downloading [=====>    ] 12.3MB/50.1MB`), replaced by its final state
//! (`Pull complete`, `Already exists`, `Pushed`, `Mounted from REPO`).
//! Off a terminal, `registry.rs` prints one line per state change instead.

use std::collections::BTreeMap;
use std::sync::Mutex;

use forge_cache::Sha256Digest;
use forge_registry::transfer::BlobEvent;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The bars of one transfer.
pub(crate) struct TransferView {
    multi: MultiProgress,
    bars: Mutex<BTreeMap<Sha256Digest, ProgressBar>>,
    pull: bool,
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

impl TransferView {
    /// Bars on standard output (a pull's or push's report).
    pub(crate) fn new(pull: bool) -> Self {
        Self {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stdout()),
            bars: Mutex::new(BTreeMap::new()),
            pull,
        }
    }

    fn bar(&self, digest: &Sha256Digest) -> ProgressBar {
        let mut bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
        bars.entry(*digest)
            .or_insert_with(|| {
                let bar = self.multi.add(ProgressBar::new(0));
                bar.set_style(style("{prefix}: {msg}"));
                bar.set_prefix(digest.hex()[..12].to_string());
                bar.set_message(if self.pull { "Waiting" } else { "Preparing" });
                bar
            })
            .clone()
    }

    /// Shows `event`.
    pub(crate) fn event(&self, event: BlobEvent) {
        match event {
            BlobEvent::Exists(d) => self.bar(&d).finish_with_message(if self.pull {
                "Already exists"
            } else {
                "Layer already exists"
            }),
            BlobEvent::Progress {
                digest,
                done,
                total,
            } => {
                let bar = self.bar(&digest);
                if bar.length() != Some(total) {
                    bar.set_length(total);
                    bar.set_style(style("{prefix}: {msg} [{bar:40}] {bytes}/{total_bytes}"));
                    bar.set_message(if self.pull { "Downloading" } else { "Pushing" });
                }
                bar.set_position(done);
            }
            BlobEvent::Done(d) => {
                let bar = self.bar(&d);
                bar.set_style(style("{prefix}: {msg}"));
                bar.finish_with_message(if self.pull { "Pull complete" } else { "Pushed" });
            }
            BlobEvent::Mounted { digest, from } => {
                let bar = self.bar(&digest);
                bar.set_style(style("{prefix}: {msg}"));
                bar.finish_with_message(format!("Mounted from {from}"));
            }
        }
    }
}
