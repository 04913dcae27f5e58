//! `forge build --output`: where the built image goes besides the store,
//! with buildx's syntax: `type=image` (the default: the store only),
//! `type=oci,dest=FILE` and `type=docker,dest=FILE` (the archives `forge
//! save` writes), `type=tar,dest=FILE` (the image's file system as one tar)
//! and `type=local,dest=DIR` (that file system unpacked into DIR). A bare
//! `DIR` is `type=local,dest=DIR` and `-` is `type=tar,dest=-` (standard
//! output), as for buildx.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use forge_cache::archive::{self, ArchiveFormat, SaveItem};
use forge_cache::layer::{Compression, LayerOptions};
use forge_cache::reference::Reference;
use forge_cache::store::{ImageRecord, Store};
use forge_cache::Sha256Digest;
use forge_executor::build::BuiltImage;
use oci_spec::image::{Descriptor, Digest, MediaType};

use crate::Failure;

/// An `--output`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Output {
    /// The store only.
    Image,
    /// An OCI archive at the path (`-`: standard output).
    Oci(PathBuf),
    /// A `docker save` archive at the path (`-`: standard output).
    Docker(PathBuf),
    /// The file system as a tar at the path (`-`: standard output).
    Tar(PathBuf),
    /// The file system unpacked into the directory.
    Local(PathBuf),
    /// The store, then pushed to the registry of each tag (`type=registry`,
    /// `type=image,push=true`); `name=` adds a name to push under.
    Registry(Option<String>),
}

impl Output {
    /// Whether it is written to standard output (which then carries nothing
    /// else: `-q` prints no ID).
    pub(crate) fn to_stdout(&self) -> bool {
        match self {
            Output::Oci(p) | Output::Docker(p) | Output::Tar(p) => p == Path::new("-"),
            Output::Image | Output::Local(_) | Output::Registry(_) => false,
        }
    }
}

fn bad(spec: &str, why: impl std::fmt::Display) -> Failure {
    Failure {
        report: miette::miette!(
            help = "type=image[,push=true], type=registry[,name=REF], type=oci,dest=FILE, \
                    type=docker,dest=FILE, type=tar,dest=FILE, type=local,dest=DIR, a directory, \
                    or - (a tar on standard output)",
            "invalid --output {spec:?}: {why}"
        ),
        code: 1,
    }
}

impl FromStr for Output {
    type Err = Failure;

    fn from_str(spec: &str) -> Result<Self, Failure> {
        if spec == "-" {
            return Ok(Output::Tar(PathBuf::from("-")));
        }
        if !spec.contains('=') {
            return Ok(Output::Local(PathBuf::from(spec)));
        }
        let mut kind = None;
        let mut dest = None;
        let mut push = false;
        let mut name = None;
        for field in spec.split(',') {
            match field.split_once('=') {
                Some(("type", v)) => kind = Some(v),
                Some(("dest", v)) => dest = Some(PathBuf::from(v)),
                Some(("push", v)) => push = v == "true",
                Some(("name", v)) if !v.is_empty() => name = Some(v.to_string()),
                Some((key, _)) => return Err(bad(spec, format!("unknown key `{key}`"))),
                None => return Err(bad(spec, format!("`{field}` is not KEY=VALUE"))),
            }
        }
        let needs_dest = |make: fn(PathBuf) -> Output| match &dest {
            Some(d) if !d.as_os_str().is_empty() => Ok(make(d.clone())),
            _ => Err(bad(spec, "dest= is required")),
        };
        match kind {
            Some("registry") => Ok(Output::Registry(name)),
            Some("image") if push => Ok(Output::Registry(name)),
            Some("image") if name.is_some() => Err(bad(spec, "name= needs push=true")),
            Some("image") => Ok(Output::Image),
            Some("oci") => needs_dest(Output::Oci),
            Some("docker") => needs_dest(Output::Docker),
            Some("tar") => needs_dest(Output::Tar),
            Some("local") => needs_dest(Output::Local),
            Some(other) => Err(bad(spec, format!("unknown type `{other}`"))),
            None => Err(bad(spec, "type= is required")),
        }
    }
}

fn io_failure(what: &str, path: &Path, e: impl std::fmt::Display) -> Failure {
    Failure {
        report: miette::miette!("cannot {what} `{}`: {e}", path.display()),
        code: 2,
    }
}

/// Writes to `path` through a temp file beside it, renamed when complete
/// (a failed export leaves nothing); `-` writes to standard output.
fn write_file(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> Result<(), Failure>,
) -> Result<(), Failure> {
    if path == Path::new("-") {
        let stdout = std::io::stdout();
        let mut lock = stdout.lock();
        write(&mut lock)?;
        return lock.flush().map_err(|e| io_failure("write", path, e));
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    let mut temp =
        tempfile::NamedTempFile::new_in(dir).map_err(|e| io_failure("write in", dir, e))?;
    write(temp.as_file_mut())?;
    temp.as_file()
        .sync_all()
        .map_err(|e| io_failure("write", path, e))?;
    temp.persist(path)
        .map_err(|e| io_failure("write", path, e.error))?;
    Ok(())
}

/// The store's record of a built image (it may have no name).
fn record_of(image: &BuiltImage) -> Result<ImageRecord, Failure> {
    let digest = Digest::from_str(&image.committed.manifest.to_string()).map_err(|e| Failure {
        report: miette::miette!("bad manifest digest: {e}"),
        code: 101,
    })?;
    Ok(ImageRecord {
        name: None,
        reference: None,
        manifest: Descriptor::new(
            MediaType::ImageManifest,
            image.committed.manifest_size,
            digest,
        ),
        digest: image.committed.manifest,
        id: Some(image.committed.id),
        created: None,
        repo_digest: None,
    })
}

/// Applies the image's layers, in order, to `root`.
fn unpack(store: &Store, record: &ImageRecord, root: &Path) -> Result<(), Failure> {
    let manifest = store.manifest(record)?;
    for layer in manifest.layers() {
        let digest: Sha256Digest = layer.digest().to_string().parse()?;
        let blob = store.open_blob(&digest)?;
        let mut tar = forge_cache::layer::decompress(blob).map_err(|e| Failure {
            report: miette::miette!("reading layer {digest}: {e}"),
            code: 2,
        })?;
        forge_cache::layer::apply_layer(&mut tar, root, &Default::default()).map_err(|e| {
            Failure {
                report: miette::miette!("unpacking layer {digest}: {e}"),
                code: 2,
            }
        })?;
    }
    Ok(())
}

/// Exports `image` as `output` says.
pub(crate) fn export(store: &Store, image: &BuiltImage, output: &Output) -> Result<(), Failure> {
    let record = record_of(image)?;
    let names = image
        .tags
        .iter()
        .map(|t| Reference::parse(t))
        .collect::<Result<Vec<_>, _>>()?;
    let save = |format: ArchiveFormat, path: &Path| {
        let items = [SaveItem {
            record: record.clone(),
            names: names.clone(),
        }];
        write_file(path, |out| Ok(archive::save(store, &items, format, out)?))
    };
    match output {
        Output::Image | Output::Registry(_) => Ok(()),
        Output::Oci(path) => save(ArchiveFormat::Oci, path),
        Output::Docker(path) => save(ArchiveFormat::Docker, path),
        Output::Tar(path) => {
            let root = tempfile::tempdir_in(store.tmp_dir())
                .map_err(|e| io_failure("create a directory in", &store.tmp_dir(), e))?;
            unpack(store, &record, root.path())?;
            let plain = LayerOptions {
                compression: Compression::None,
                ..LayerOptions::from_env()
            };
            write_file(path, |out| {
                forge_cache::layer::write_dir_layer(root.path(), &plain, out)
                    .map(|_| ())
                    .map_err(|e| Failure {
                        report: miette::miette!("writing {}: {e}", path.display()),
                        code: 2,
                    })
            })
        }
        Output::Local(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| io_failure("create", dir, e))?;
            unpack(store, &record, dir)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_read_as_buildx_reads_them() {
        let ok = |s: &str| {
            s.parse::<Output>()
                .unwrap_or_else(|e| panic!("{s}: {:?}", e.report))
        };
        assert_eq!(ok("type=image"), Output::Image);
        assert_eq!(ok("type=oci,dest=o.tar"), Output::Oci("o.tar".into()));
        assert_eq!(ok("dest=d.tar,type=docker"), Output::Docker("d.tar".into()));
        assert_eq!(ok("type=tar,dest=-"), Output::Tar("-".into()));
        assert_eq!(ok("type=local,dest=out"), Output::Local("out".into()));
        assert_eq!(ok("out/dir"), Output::Local("out/dir".into()));
        assert_eq!(ok("-"), Output::Tar("-".into()));
        assert_eq!(ok("type=registry"), Output::Registry(None));
        assert_eq!(
            ok("type=image,name=r:5000/a:1,push=true"),
            Output::Registry(Some("r:5000/a:1".into()))
        );
        for bad in [
            "type=oci",
            "type=nope,dest=x",
            "type=local,dest=x,color=red",
            "type=image,name=x",
        ] {
            assert!(bad.parse::<Output>().is_err(), "{bad}");
        }
    }
}
