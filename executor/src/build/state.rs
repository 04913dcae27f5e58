//! The image a stage has built so far: its config document and its layers.
//!
//! The config is kept as JSON (`serde_json::Map`), not as `oci_spec`'s typed
//! `ImageConfiguration`: Docker's extensions that BuildKit writes and that base
//! images carry (`Healthcheck`, `OnBuild`, `Shell`, `ArgsEscaped`, ...) are not
//! in the OCI spec and a typed round trip would drop them.

use forge_cache::image::{host_architecture, put_manifest, rfc3339, LayerRef};
use forge_cache::store::Store;
use forge_cache::Sha256Digest;
use forge_ir::{Healthcheck, Op};
use serde_json::{json, Map, Value};

use super::history::command_argv;
use crate::ExecutorError;

/// One layer of an image: the blob and its uncompressed digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// The blob as the manifest lists it.
    pub blob: LayerRef,
    /// sha256 of the uncompressed tar (`rootfs.diff_ids`).
    pub diff_id: Sha256Digest,
}

/// A stage's image so far.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageState {
    /// The whole config document (`architecture`, `os`, `config`, `rootfs`,
    /// `history`, ...). `rootfs.diff_ids` is rewritten from `layers` on commit.
    pub config: Map<String, Value>,
    /// The layers, bottom first.
    pub layers: Vec<Layer>,
}

/// The result of committing a state to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// The config digest: the image ID.
    pub id: Sha256Digest,
    /// The manifest digest.
    pub manifest: Sha256Digest,
    /// The manifest's size.
    pub manifest_size: u64,
}

fn store_err(e: forge_cache::CacheError) -> ExecutorError {
    ExecutorError::Store(Box::new(e))
}

impl ImageState {
    /// The empty image `FROM scratch` starts from.
    pub fn scratch() -> Self {
        let mut config = Map::new();
        config.insert("architecture".into(), json!(host_architecture()));
        config.insert("os".into(), json!("linux"));
        config.insert("config".into(), json!({}));
        config.insert("rootfs".into(), json!({"type": "layers", "diff_ids": []}));
        config.insert("history".into(), json!([]));
        ImageState {
            config,
            layers: Vec::new(),
        }
    }

    /// The image whose manifest is `manifest` in the store.
    ///
    /// # Errors
    /// Missing or malformed blobs, or a config whose `diff_ids` do not match
    /// the manifest's layers.
    pub fn from_store(store: &Store, manifest: &Sha256Digest) -> Result<Self, ExecutorError> {
        Ok(Self::stored(store, manifest)?.0)
    }

    /// [`ImageState::from_store`], with the image as it is committed (what a
    /// step-cache hit is: nothing to write again).
    ///
    /// # Errors
    /// As [`ImageState::from_store`].
    pub fn stored(
        store: &Store,
        manifest: &Sha256Digest,
    ) -> Result<(Self, Committed), ExecutorError> {
        let parsed = store.manifest_by_digest(manifest).map_err(store_err)?;
        let config_digest: Sha256Digest = parsed
            .config()
            .digest()
            .to_string()
            .parse()
            .map_err(store_err)?;
        let bytes = store.read_blob(&config_digest).map_err(store_err)?;
        let config: Map<String, Value> = serde_json::from_slice(&bytes).map_err(|e| {
            ExecutorError::InvalidImage(format!("config {config_digest} is not a JSON object: {e}"))
        })?;
        let diff_ids: Vec<Sha256Digest> = config
            .get("rootfs")
            .and_then(|r| r.get("diff_ids"))
            .and_then(Value::as_array)
            .map(|ids| {
                ids.iter()
                    .filter_map(Value::as_str)
                    .map(str::parse)
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()
            .map_err(store_err)?
            .unwrap_or_default();
        if diff_ids.len() != parsed.layers().len() {
            return Err(ExecutorError::InvalidImage(format!(
                "image {manifest}: {} layers but {} diff_ids",
                parsed.layers().len(),
                diff_ids.len()
            )));
        }
        let mut layers = Vec::new();
        for (desc, diff_id) in parsed.layers().iter().zip(diff_ids) {
            layers.push(Layer {
                blob: LayerRef {
                    media_type: desc.media_type().to_string(),
                    digest: desc.digest().to_string().parse().map_err(store_err)?,
                    size: desc.size(),
                },
                diff_id,
            });
        }
        let manifest_size = std::fs::metadata(store.blob_path(manifest))
            .map_err(|source| ExecutorError::Io {
                what: "reading the size of",
                path: store.blob_path(manifest),
                source,
            })?
            .len();
        let committed = Committed {
            id: config_digest,
            manifest: *manifest,
            manifest_size,
        };
        Ok((ImageState { config, layers }, committed))
    }

    /// The `config` object (Env, Cmd, ...), created if absent.
    pub fn container_config(&mut self) -> &mut Map<String, Value> {
        let entry = self
            .config
            .entry("config")
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        match entry {
            Value::Object(map) => map,
            _ => unreachable!("just made an object"),
        }
    }

    /// A string field of the `config` object.
    pub fn config_str(&self, key: &str) -> Option<&str> {
        self.config.get("config")?.get(key)?.as_str()
    }

    /// Appends a history entry.
    pub fn push_history(&mut self, created_by: &str, empty_layer: bool, created: &str) {
        let mut entry = Map::new();
        entry.insert("created".into(), json!(created));
        entry.insert("created_by".into(), json!(created_by));
        entry.insert("comment".into(), json!("buildkit.dockerfile.v0"));
        if empty_layer {
            entry.insert("empty_layer".into(), json!(true));
        }
        let history = self
            .config
            .entry("history")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(items) = history {
            items.push(Value::Object(entry));
        } else {
            *history = Value::Array(vec![Value::Object(entry)]);
        }
    }

    /// Sets the environment as `KEY=value` strings.
    pub fn set_env(&mut self, env: &[(String, String)]) {
        let list: Vec<Value> = env.iter().map(|(k, v)| json!(format!("{k}={v}"))).collect();
        self.container_config()
            .insert("Env".into(), Value::Array(list));
    }

    /// Applies a step's effect on the config (not its file-system effect).
    /// `cmd_set` tracks whether this stage set `CMD` (BuildKit clears an
    /// inherited `Cmd` when `ENTRYPOINT` is set and `CMD` was not).
    pub fn apply_config(&mut self, op: &Op, shell: &[String], cmd_set: &mut bool) {
        match op {
            Op::Env(pairs) => {
                let mut env = self.env();
                for (k, v) in pairs {
                    match env.iter_mut().find(|(name, _)| name == k) {
                        Some(slot) => slot.1.clone_from(v),
                        None => env.push((k.clone(), v.clone())),
                    }
                }
                self.set_env(&env);
            }
            Op::Label(pairs) => {
                let labels = object_field(self.container_config(), "Labels");
                for (k, v) in pairs {
                    labels.insert(k.clone(), json!(v));
                }
            }
            Op::Expose(ports) => {
                let exposed = object_field(self.container_config(), "ExposedPorts");
                for p in ports {
                    exposed.insert(p.clone(), json!({}));
                }
            }
            Op::Volume(vols) => {
                let volumes = object_field(self.container_config(), "Volumes");
                for v in vols {
                    volumes.insert(v.clone(), json!({}));
                }
            }
            Op::User(user) => {
                self.container_config().insert("User".into(), json!(user));
            }
            Op::Workdir(dir) => {
                self.container_config()
                    .insert("WorkingDir".into(), json!(dir));
            }
            Op::Cmd(cmd) => {
                let argv = command_argv(cmd, shell);
                self.container_config().insert("Cmd".into(), json!(argv));
                *cmd_set = true;
            }
            Op::Entrypoint(cmd) => {
                let argv = command_argv(cmd, shell);
                let config = self.container_config();
                config.insert("Entrypoint".into(), json!(argv));
                if !*cmd_set {
                    config.remove("Cmd");
                }
            }
            Op::StopSignal(sig) => {
                self.container_config()
                    .insert("StopSignal".into(), json!(sig));
            }
            Op::Healthcheck(hc) => {
                self.container_config()
                    .insert("Healthcheck".into(), healthcheck_json(hc));
            }
            Op::Shell(shell) => {
                self.container_config().insert("Shell".into(), json!(shell));
            }
            Op::Maintainer(name) => {
                self.config.insert("author".into(), json!(name));
            }
            Op::Onbuild(trigger) => {
                let config = self.container_config();
                let list = config
                    .entry("OnBuild")
                    .or_insert_with(|| Value::Array(Vec::new()));
                if let Value::Array(items) = list {
                    items.push(json!(trigger));
                } else {
                    *list = json!([trigger]);
                }
            }
            Op::Run(_) | Op::Copy(_) | Op::Add(_) | Op::Arg(_) => {}
        }
    }

    /// `Env` as pairs.
    pub fn env(&self) -> Vec<(String, String)> {
        self.config
            .get("config")
            .and_then(|c| c.get("Env"))
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .map(|kv| match kv.split_once('=') {
                        Some((k, v)) => (k.to_string(), v.to_string()),
                        None => (kv.to_string(), String::new()),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Writes the config and manifest blobs; the config's `rootfs.diff_ids`
    /// and `created` are set from the state.
    ///
    /// # Errors
    /// A store failure.
    pub fn commit(
        &mut self,
        store: &Store,
        created_epoch: u64,
    ) -> Result<Committed, ExecutorError> {
        let diff_ids: Vec<Value> = self
            .layers
            .iter()
            .map(|l| json!(l.diff_id.to_string()))
            .collect();
        self.config.insert(
            "rootfs".into(),
            json!({"type": "layers", "diff_ids": diff_ids}),
        );
        self.config
            .insert("created".into(), json!(rfc3339(created_epoch)));
        // serde_json's maps are sorted: equal states give equal bytes.
        let bytes = serde_json::to_vec(&self.config)
            .map_err(|e| ExecutorError::InvalidImage(format!("config does not serialize: {e}")))?;
        let id = store.put_blob(&bytes).map_err(store_err)?;
        let blobs: Vec<LayerRef> = self.layers.iter().map(|l| l.blob.clone()).collect();
        let descriptor = put_manifest(store, &id, bytes.len() as u64, &blobs).map_err(store_err)?;
        let manifest: Sha256Digest = descriptor.digest().to_string().parse().map_err(store_err)?;
        Ok(Committed {
            id,
            manifest,
            manifest_size: descriptor.size(),
        })
    }
}

/// The object at `key` of `map`, created (or replaced, if not an object).
fn object_field<'m>(map: &'m mut Map<String, Value>, key: &str) -> &'m mut Map<String, Value> {
    let entry = map.entry(key).or_insert_with(|| Value::Object(Map::new()));
    if !entry.is_object() {
        *entry = Value::Object(Map::new());
    }
    match entry {
        Value::Object(m) => m,
        _ => unreachable!("just made an object"),
    }
}

/// Docker's `Healthcheck` config object: durations in nanoseconds, zero
/// fields left out.
fn healthcheck_json(hc: &Healthcheck) -> Value {
    let mut map = Map::new();
    map.insert("Test".into(), json!(hc.test));
    for (key, value) in [
        ("Interval", hc.interval_ns),
        ("Timeout", hc.timeout_ns),
        ("StartPeriod", hc.start_period_ns),
        ("StartInterval", hc.start_interval_ns),
    ] {
        if value != 0 {
            map.insert(key.into(), json!(value));
        }
    }
    if hc.retries != 0 {
        map.insert("Retries".into(), json!(hc.retries));
    }
    Value::Object(map)
}
