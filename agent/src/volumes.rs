//! Pod volumes as directories the guest gets preopened, and nothing else:
//! - emptyDir: `<data>/pods/<uid>/volumes/<name>`, kept across container restarts and agent
//!   restarts, removed with the pod (medium Memory: under the tmpfs secret root instead);
//! - hostPath: the node's directory itself (the hub only admits paths the namespace allows);
//! - persistentVolumeClaim: `<data>/claims/<namespace>/<claimName>`, created on first use and
//!   never removed with a pod (nor by [`sweep`]): a StatefulSet replica's data outlives its pods
//!   and agent restarts, and the hub keeps the claim's pods on this node;
//! - configMap, secret, downwardAPI: files written by the agent and mounted read-only. Secret
//!   files live under `secret_dir` (tmpfs by default, never the disk, like kubelet's) and
//!   everything projected is rewritten in place when its source changes (see [`refresh`]).
use crate::Shared;
use crate::runtime::wasm::Mount;
use base64::Engine as _;
use flotilla_proto::api::{Container, Kind, Object, Pod, Volume};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The directory of the pod's disk-backed volumes.
fn pod_root(shared: &Shared, uid: &str) -> PathBuf {
    shared.cfg.data_dir.join("pods").join(uid)
}

/// The directory of a claim on this node, shared by every pod that uses the claim.
fn claim_dir(shared: &Shared, namespace: &str, claim: &str) -> PathBuf {
    shared
        .cfg
        .data_dir
        .join("claims")
        .join(namespace)
        .join(claim)
}

/// The directory of the pod's memory-backed volumes (secrets, emptyDir medium Memory).
fn memory_root(shared: &Shared, uid: &str) -> PathBuf {
    shared.cfg.secret_dir.join(uid)
}

fn volume_dir(shared: &Shared, pod: &Pod, v: &Volume) -> PathBuf {
    let uid = &pod.metadata.uid;
    let in_memory = v.secret.is_some()
        || v.empty_dir
            .as_ref()
            .is_some_and(|e| e.medium.as_deref() == Some("Memory"));
    if in_memory {
        memory_root(shared, uid).join(&v.name)
    } else {
        pod_root(shared, uid).join("volumes").join(&v.name)
    }
}

/// Creates or checks every volume of the pod and returns the container's mounts. An error
/// (a missing ConfigMap, a missing hostPath directory) reads like kubelet's FailedMount.
pub async fn prepare(shared: &Shared, pod: &Pod, c: &Container) -> Result<Vec<Mount>, String> {
    let mut dirs: BTreeMap<&str, (PathBuf, bool)> = BTreeMap::new();
    for v in &pod.spec.volumes {
        let (dir, read_only) = if let Some(h) = &v.host_path {
            let dir = PathBuf::from(&h.path);
            if h.type_.as_deref() == Some("DirectoryOrCreate") {
                std::fs::create_dir_all(&dir).map_err(|e| {
                    format!(
                        "MountVolume.SetUp failed for volume {:?}: {}: {e}",
                        v.name, h.path
                    )
                })?;
            } else if !dir.is_dir() {
                return Err(format!(
                    "MountVolume.SetUp failed for volume {:?}: hostPath {} is not a directory on node {}",
                    v.name, h.path, shared.cfg.node_name
                ));
            }
            (dir, false)
        } else if let Some(c) = &v.persistent_volume_claim {
            let dir = claim_dir(shared, pod.namespace(), &c.claim_name);
            create_volume_dir(&dir, WRITABLE)
                .map_err(|e| format!("MountVolume.SetUp failed for volume {:?}: {e}", v.name))?;
            (dir, c.read_only)
        } else if v.empty_dir.is_some() {
            let dir = volume_dir(shared, pod, v);
            create_volume_dir(&dir, WRITABLE)
                .map_err(|e| format!("MountVolume.SetUp failed for volume {:?}: {e}", v.name))?;
            (dir, false)
        } else {
            let dir = volume_dir(shared, pod, v);
            project(shared, pod, v, &dir).await?;
            (dir, true)
        };
        dirs.insert(v.name.as_str(), (dir, read_only));
    }
    c.volume_mounts
        .iter()
        .map(|m| {
            let (dir, forced_read_only) = dirs
                .get(m.name.as_str())
                .ok_or_else(|| format!("volume mount {:?}: no volume of that name", m.name))?;
            Ok(Mount {
                host_path: dir.clone(),
                guest_path: m.mount_path.clone(),
                read_only: m.read_only || *forced_read_only,
            })
        })
        .collect()
}

/// Rewrites the projected volumes (configMap, secret, downwardAPI) whose sources changed.
/// Sources that cannot be read now (hub away, object deleted) leave the files as they are.
pub async fn refresh(shared: &Shared, pod: &Pod) {
    for v in &pod.spec.volumes {
        if v.config_map.is_some() || v.secret.is_some() || v.downward_api.is_some() {
            let dir = volume_dir(shared, pod, v);
            if let Err(e) = project(shared, pod, v, &dir).await {
                tracing::debug!(pod = %pod.metadata.name, volume = %v.name, error = %e, "volume not refreshed");
            }
        }
    }
}

/// Removes everything a pod's volumes left on the node (not hostPath directories).
pub fn remove(shared: &Shared, uid: &str) {
    for dir in [pod_root(shared, uid), memory_root(shared, uid)] {
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %dir.display(), error = %e, "failed to remove pod volumes");
        }
    }
}

/// Removes the volumes of pods this node no longer runs (deleted while the agent was down).
pub fn sweep(shared: &Shared, keep: &BTreeSet<String>) {
    for root in [
        shared.cfg.data_dir.join("pods"),
        shared.cfg.secret_dir.clone(),
    ] {
        let Ok(entries) = std::fs::read_dir(&root) else {
            continue;
        };
        for e in entries.flatten() {
            let uid = e.file_name().to_string_lossy().to_string();
            if !keep.contains(&uid) {
                remove(shared, &uid);
            }
        }
    }
}

/// A volume any container user may write to, as kubelet makes emptyDir (the agent's private
/// directories above it keep host users out).
const WRITABLE: u32 = 0o777;
/// A projected volume (ConfigMap, Secret, downwardAPI): readable by any container user.
const READABLE: u32 = 0o755;

/// Creates a volume's directory (its parents private to the agent) with `mode`.
fn create_volume_dir(dir: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    create_private_dir(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// The files of a projected volume, by relative path.
async fn files_of(
    shared: &Shared,
    pod: &Pod,
    v: &Volume,
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let ns = pod.namespace();
    let failed = |m: String| format!("MountVolume.SetUp failed for volume {:?}: {m}", v.name);
    let (kind, name, items, optional) = match (&v.config_map, &v.secret, &v.downward_api) {
        (Some(c), _, _) => (Kind::ConfigMap, &c.name, &c.items, c.optional == Some(true)),
        (_, Some(s), _) => (
            Kind::Secret,
            &s.secret_name,
            &s.items,
            s.optional == Some(true),
        ),
        (_, _, Some(d)) => {
            return Ok(d
                .items
                .iter()
                .map(|f| {
                    let field = f.field_ref.as_ref().map_or("", |r| r.field_path.as_str());
                    (f.path.clone(), downward_value(pod, field).into_bytes())
                })
                .collect());
        }
        _ => return Ok(BTreeMap::new()),
    };
    let data = match crate::envsource::fetch(shared, kind, ns, name)
        .await
        .map_err(failed)?
    {
        None if optional => return Ok(BTreeMap::new()),
        None => {
            return Err(failed(format!(
                "{} {name:?} not found",
                kind.as_str().to_ascii_lowercase()
            )));
        }
        Some(obj) => bytes_of(&obj),
    };
    if items.is_empty() {
        return Ok(data);
    }
    let mut files = BTreeMap::new();
    for item in items {
        match data.get(&item.key) {
            Some(bytes) => {
                files.insert(item.path.clone(), bytes.clone());
            }
            None if optional => {}
            None => {
                return Err(failed(format!(
                    "key {:?} not found in {} {name:?}",
                    item.key,
                    kind.as_str().to_ascii_lowercase()
                )));
            }
        }
    }
    Ok(files)
}

/// Every key of a ConfigMap (data and binaryData) or Secret, as file contents.
fn bytes_of(o: &Object) -> BTreeMap<String, Vec<u8>> {
    let decode = |v: &String| base64::engine::general_purpose::STANDARD.decode(v).ok();
    match o {
        Object::ConfigMap(c) => c
            .data
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
            .chain(
                c.binary_data
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), decode(v)?))),
            )
            .collect(),
        Object::Secret(s) => s
            .data
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), decode(v)?)))
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// A downwardAPI field as kubelet writes it (labels and annotations as `key="value"` lines).
fn downward_value(pod: &Pod, field: &str) -> String {
    let pairs = |m: &BTreeMap<String, String>| {
        m.iter()
            .map(|(k, v)| format!("{k}={v:?}\n"))
            .collect::<String>()
    };
    match field {
        "metadata.name" => pod.metadata.name.clone(),
        "metadata.namespace" => pod.namespace().to_string(),
        "metadata.uid" => pod.metadata.uid.clone(),
        "metadata.labels" => pairs(&pod.metadata.labels),
        "metadata.annotations" => pairs(&pod.metadata.annotations),
        "spec.nodeName" => pod.spec.node_name.clone().unwrap_or_default(),
        _ => String::new(),
    }
}

/// Writes a projected volume: each file replaced atomically (write, then rename) only when
/// its content changed, and files no longer projected removed. The directory itself stays,
/// so a guest's preopened handle keeps seeing the current files.
async fn project(shared: &Shared, pod: &Pod, v: &Volume, dir: &Path) -> Result<(), String> {
    let files = files_of(shared, pod, v).await?;
    let failed =
        |e: std::io::Error| format!("MountVolume.SetUp failed for volume {:?}: {e}", v.name);
    create_volume_dir(dir, READABLE).map_err(failed)?;
    for (path, bytes) in &files {
        let target = dir.join(path);
        if std::fs::read(&target).ok().as_deref() == Some(bytes.as_slice()) {
            continue;
        }
        if let Some(parent) = target.parent() {
            create_volume_dir(parent, READABLE).map_err(failed)?;
        }
        crate::files::write_atomic(&target, &[bytes], 0o644).map_err(failed)?;
    }
    let wanted: BTreeSet<PathBuf> = files.keys().map(|p| dir.join(p)).collect();
    remove_unlisted(dir, &wanted);
    Ok(())
}

fn remove_unlisted(dir: &Path, wanted: &BTreeSet<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            remove_unlisted(&path, wanted);
            let _ = std::fs::remove_dir(&path); // only succeeds when empty
        } else if !wanted.contains(&path) && !crate::files::is_temporary(&path) {
            // Another writer's file on its way in is not ours to remove.
            let _ = std::fs::remove_file(&path);
        }
    }
}
