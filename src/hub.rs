//! `hf:OWNER/NAME[@REV]` models: an open_clip repo on the Hugging Face hub, as a local snapshot
//! directory in the hub's own cache layout, so that Python's `huggingface_hub` and echovault
//! share one cache.
//!
//! The cache (`HF_HUB_CACHE`, else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else
//! `~/.cache/huggingface/hub`) holds `models--OWNER--NAME/` with `blobs/<etag>` (the bytes),
//! `snapshots/<commit>/<file>` (relative symlinks into `blobs/`), `refs/<REV>` (the commit a
//! branch or tag named when last fetched) and `.no_exist/<commit>/<file>` (files known to be
//! absent at that commit). A snapshot that already holds the config, the weights and an answer
//! for every optional file is used without the network; otherwise the missing files are fetched
//! with the `hf-hub` crate (blocking client) from `HF_ENDPOINT` (default
//! <https://huggingface.co>), authenticated with `HF_TOKEN` (or the token file that
//! `huggingface-cli login` writes). `HF_HUB_OFFLINE=1` never touches the network. The token is
//! sent to the endpoint only: it is never logged, printed or put in an error.

use crate::error::Error;
use crate::tokenize::TEMPLATE_VOCAB_FILE;
use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::api::Progress;
use hf_hub::{Cache, Repo, RepoType};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What marks a `--model` value as a hub repo rather than a directory.
pub const PREFIX: &str = "hf:";
/// The revision of `hf:OWNER/NAME` without `@REV`.
pub const DEFAULT_REVISION: &str = "main";
/// The hub `HF_ENDPOINT` defaults to.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// The open_clip model config: every open_clip hub repo has it.
const CONFIG_FILE: &str = "open_clip_config.json";
/// Checkpoints, in order of preference (safetensors loads without unpickling a zip).
const WEIGHTS_FILES: [&str; 2] = ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"];
/// Fetched when the repo has them: the CLIP BPE tokenizer and EchoCLIP-R's phrase vocabulary.
const OPTIONAL_FILES: [&str; 2] = ["tokenizer.json", TEMPLATE_VOCAB_FILE];
/// The longest repo id the hub accepts (huggingface_hub's `validate_repo_id`).
const MAX_REPO_ID_LEN: usize = 96;
/// How often a download in progress logs how far it got.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// A model repo on the hub at one revision: `hf:OWNER/NAME[@REV]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubModel {
    /// User or organisation.
    pub owner: String,
    /// Repo name; the embedding space of the model is named after it.
    pub name: String,
    /// Branch, tag or 40-hex commit.
    pub revision: String,
}

impl std::fmt::Display for HubModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PREFIX}{}/{}@{}", self.owner, self.name, self.revision)
    }
}

/// Whether a `--model` value names a hub repo (`hf:…`) rather than a directory.
pub fn is_hub_ref(arg: &str) -> bool {
    arg.starts_with(PREFIX)
}

impl std::str::FromStr for HubModel {
    type Err = Error;

    /// Parses `hf:OWNER/NAME[@REV]`.
    fn from_str(spec: &str) -> Result<HubModel, Error> {
        let bad = |reason: String| Error::Hub { model: spec.to_owned(), reason };
        let rest = spec.strip_prefix(PREFIX).ok_or_else(|| bad(format!("expected {PREFIX}OWNER/NAME[@REV]")))?;
        let (id, revision) = match rest.split_once('@') {
            Some((id, rev)) => (id, rev),
            None => (rest, DEFAULT_REVISION),
        };
        let (owner, name) =
            id.split_once('/').ok_or_else(|| bad(format!("expected {PREFIX}OWNER/NAME[@REV], e.g. {PREFIX}echonet/echo-clip")))?;
        for (what, part) in [("owner", owner), ("name", name)] {
            check_id_part(part).map_err(|why| bad(format!("repo {what} '{part}' {why}")))?;
        }
        if id.len() > MAX_REPO_ID_LEN {
            return Err(bad(format!("repo id is {} characters long, the hub allows {MAX_REPO_ID_LEN}", id.len())));
        }
        check_revision(revision).map_err(|why| bad(format!("revision '{revision}' {why}")))?;
        Ok(HubModel { owner: owner.to_owned(), name: name.to_owned(), revision: revision.to_owned() })
    }
}

/// The hub's rule for an owner or a repo name: ASCII letters, digits, `-`, `_`, `.`, starting and
/// ending with a letter, digit or `_`, never `--` or `..` (the cache folder joins parts with `--`).
fn check_id_part(part: &str) -> Result<(), &'static str> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    if part.is_empty() {
        return Err("is empty");
    }
    if !part.chars().all(|c| word(c) || c == '-' || c == '.') {
        return Err("may hold only letters, digits, '-', '_' and '.'");
    }
    if !part.starts_with(word) || !part.ends_with(word) {
        return Err("must start and end with a letter, digit or '_'");
    }
    if part.contains("--") || part.contains("..") {
        return Err("may not contain '--' or '..'");
    }
    Ok(())
}

/// A branch, tag or commit: it becomes a path under `refs/`, so no empty, `.` or `..` segment.
fn check_revision(rev: &str) -> Result<(), &'static str> {
    if rev.is_empty() {
        return Err("is empty (drop the '@' for the default branch)");
    }
    if !rev.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c)) {
        return Err("may hold only letters, digits, '-', '_', '.' and '/'");
    }
    if rev.split('/').any(|seg| seg.is_empty() || seg == "." || seg == "..") {
        return Err("has an empty, '.' or '..' path segment");
    }
    Ok(())
}

fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl HubModel {
    /// `OWNER/NAME`.
    pub fn repo_id(&self) -> String {
        format!("{}/{}", self.owner, self.name)
    }

    /// The repo's folder in the cache: `models--OWNER--NAME`.
    pub fn folder_name(&self) -> String {
        format!("models--{}--{}", self.owner, self.name)
    }
}

/// The repo NAME of a snapshot in the hub cache layout (`…/models--OWNER--NAME/snapshots/COMMIT`),
/// `None` for any other directory. Model spaces are named after it, not after the commit.
pub fn repo_name_of_snapshot(dir: &Path) -> Option<String> {
    let commit = dir.file_name()?.to_str()?;
    let snapshots = dir.parent()?;
    let folder = snapshots.parent()?.file_name()?.to_str()?;
    if !is_commit_hash(commit) || snapshots.file_name()? != "snapshots" {
        return None;
    }
    // Owners and names never contain "--", so the first one after "models--" ends the owner.
    let (_owner, name) = folder.strip_prefix("models--")?.split_once("--")?;
    (!name.is_empty()).then(|| name.to_owned())
}

/// Where the cache is, where the hub is, and how to authenticate: huggingface_hub's environment.
#[derive(Clone)]
pub struct HubSettings {
    /// The hub cache directory (holding `models--OWNER--NAME/`).
    pub cache: PathBuf,
    /// Base URL of the hub, without a trailing `/`.
    pub endpoint: String,
    /// `HF_HUB_OFFLINE`: use the cache only.
    pub offline: bool,
    /// Bearer token; kept out of `Debug` and every message.
    token: Option<String>,
}

impl std::fmt::Debug for HubSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubSettings")
            .field("cache", &self.cache)
            .field("endpoint", &self.endpoint)
            .field("offline", &self.offline)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl HubSettings {
    /// From the process environment.
    pub fn from_env() -> Result<HubSettings, Error> {
        HubSettings::from_vars(|k| std::env::var(k).ok())
    }

    /// From the given variables (empty values count as unset), as huggingface_hub reads them.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<HubSettings, Error> {
        let var = |k: &str| var(k).filter(|v| !v.trim().is_empty());
        let cache = cache_dir(&var)
            .ok_or_else(|| Error::Invalid("cannot locate the Hugging Face cache: no HOME; set HF_HUB_CACHE or HF_HOME".into()))?;
        let cache = std::path::absolute(&cache).map_err(|e| Error::io(&cache, e))?;
        let endpoint = var("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned()).trim().trim_end_matches('/').to_owned();
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(Error::Invalid(format!("HF_ENDPOINT '{endpoint}' is not an http:// or https:// URL")));
        }
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| ["1", "on", "yes", "true"].contains(&v.trim().to_ascii_lowercase().as_str()));
        Ok(HubSettings { cache, endpoint, offline, token: token(&var) })
    }

    /// Whether a token will be sent.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }
}

/// huggingface_hub's `HF_HOME`: `$HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else
/// `~/.cache/huggingface`.
fn hf_home(var: &impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(h) = var("HF_HOME") {
        return Some(expand_home(&h, var));
    }
    let xdg = match var("XDG_CACHE_HOME") {
        Some(x) => expand_home(&x, var),
        None => PathBuf::from(var("HOME")?).join(".cache"),
    };
    Some(xdg.join("huggingface"))
}

/// huggingface_hub's cache: `HF_HUB_CACHE`, else the legacy `HUGGINGFACE_HUB_CACHE`, else
/// `HF_HOME/hub`.
fn cache_dir(var: &impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    match var("HF_HUB_CACHE").or_else(|| var("HUGGINGFACE_HUB_CACHE")) {
        Some(c) => Some(expand_home(&c, var)),
        None => Some(hf_home(var)?.join("hub")),
    }
}

/// `HF_TOKEN`, else the legacy `HUGGING_FACE_HUB_TOKEN`, else the file `HF_TOKEN_PATH` or
/// `HF_HOME/token` (what `huggingface-cli login` writes).
fn token(var: &impl Fn(&str) -> Option<String>) -> Option<String> {
    if let Some(t) = var("HF_TOKEN").or_else(|| var("HUGGING_FACE_HUB_TOKEN")) {
        return Some(t.trim().to_owned());
    }
    let path = match var("HF_TOKEN_PATH") {
        Some(p) => expand_home(&p, var),
        None => hf_home(var)?.join("token"),
    };
    let t = std::fs::read_to_string(path).ok()?;
    let t = t.trim();
    (!t.is_empty()).then(|| t.to_owned())
}

/// A leading `~/` means the home directory, as Python's `expanduser`.
fn expand_home(p: &str, var: &impl Fn(&str) -> Option<String>) -> PathBuf {
    match (p.strip_prefix("~/"), var("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ if p == "~" => var("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(p)),
        _ => PathBuf::from(p),
    }
}

/// The local snapshot directory of `model` (`…/models--OWNER--NAME/snapshots/<commit>`), holding
/// `open_clip_config.json`, the weights and whichever of `tokenizer.json` and
/// `template_vocab.txt` the repo has. Fetches what the cache lacks unless it already answers for
/// every file; an unreachable hub falls back to a usable cached snapshot with a warning.
pub fn resolve(model: &HubModel, settings: &HubSettings) -> Result<PathBuf, Error> {
    let rc = RepoCache { dir: settings.cache.join(model.folder_name()) };
    let cached = rc.commit_of(&model.revision).map(|c| (rc.state(&c), c));
    match &cached {
        Some((State::Complete, commit)) => {
            tracing::debug!("{model}: snapshot {commit} from the cache {}", rc.dir.display());
            return Ok(rc.snapshot(commit));
        }
        Some((State::Usable, commit)) if settings.offline => {
            tracing::debug!("{model}: HF_HUB_OFFLINE: snapshot {commit} from the cache, optional files as they are");
            return Ok(rc.snapshot(commit));
        }
        _ if settings.offline => {
            return Err(Error::Hub {
                model: model.to_string(),
                reason: format!(
                    "HF_HUB_OFFLINE is set and the cache {} holds no snapshot of it with {CONFIG_FILE} and weights; unset HF_HUB_OFFLINE to download it",
                    settings.cache.display()
                ),
            });
        }
        _ => {}
    }
    match fetch(model, settings, &rc) {
        Ok(dir) => Ok(dir),
        Err(Fetch::Failed(e)) => Err(e),
        Err(Fetch::Unreachable(why)) => match rc.commit_of(&model.revision).filter(|c| rc.state(c) != State::Missing) {
            Some(commit) => {
                tracing::warn!("{model}: cannot reach {} ({why}); using the cached snapshot {commit}", settings.endpoint);
                Ok(rc.snapshot(&commit))
            }
            None => Err(Error::Hub {
                model: model.to_string(),
                reason: format!(
                    "cannot reach the hub at {} ({why}) and the cache {} holds no snapshot of it; check the network or HF_ENDPOINT",
                    settings.endpoint,
                    settings.cache.display()
                ),
            }),
        },
    }
}

/// What a cached snapshot holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// No config or no weights.
    Missing,
    /// Config and weights; some optional file neither there nor known to be absent.
    Usable,
    /// Config, weights, and an answer for every optional file.
    Complete,
}

/// One repo's folder in the cache: `models--OWNER--NAME`.
struct RepoCache {
    dir: PathBuf,
}

impl RepoCache {
    /// The commit a revision names: itself for a commit hash, else what `refs/REV` records.
    fn commit_of(&self, rev: &str) -> Option<String> {
        if is_commit_hash(rev) {
            return Some(rev.to_owned());
        }
        let s = std::fs::read_to_string(self.dir.join("refs").join(rev)).ok()?;
        let s = s.trim();
        is_commit_hash(s).then(|| s.to_owned())
    }

    fn snapshot(&self, commit: &str) -> PathBuf {
        self.dir.join("snapshots").join(commit)
    }

    /// The file is in the snapshot (a symlink counts only when its blob is there).
    fn has(&self, commit: &str, file: &str) -> bool {
        self.snapshot(commit).join(file).is_file()
    }

    fn no_exist(&self, commit: &str, file: &str) -> PathBuf {
        self.dir.join(".no_exist").join(commit).join(file)
    }

    fn known_absent(&self, commit: &str, file: &str) -> bool {
        self.no_exist(commit, file).exists()
    }

    /// Records that the repo has no `file` at `commit`, as huggingface_hub does after a 404.
    fn mark_absent(&self, commit: &str, file: &str) -> Result<(), Error> {
        let p = self.no_exist(commit, file);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        std::fs::write(&p, b"").map_err(|e| Error::io(&p, e))
    }

    /// Points `refs/REV` at `commit` (hf-hub does it per downloaded file; this covers a fetch that
    /// found every file already there).
    fn write_ref(&self, rev: &str, commit: &str) -> Result<(), Error> {
        if is_commit_hash(rev) {
            return Ok(());
        }
        let p = self.dir.join("refs").join(rev);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        std::fs::write(&p, commit).map_err(|e| Error::io(&p, e))
    }

    fn state(&self, commit: &str) -> State {
        if !self.has(commit, CONFIG_FILE) || !WEIGHTS_FILES.iter().any(|w| self.has(commit, w)) {
            return State::Missing;
        }
        if OPTIONAL_FILES.iter().all(|f| self.has(commit, f) || self.known_absent(commit, f)) {
            State::Complete
        } else {
            State::Usable
        }
    }
}

/// Why a fetch stopped.
enum Fetch {
    /// No answer from the endpoint (DNS, refused connection, TLS...): a cached snapshot may do.
    Unreachable(String),
    /// Anything else.
    Failed(Error),
}

impl From<Error> for Fetch {
    fn from(e: Error) -> Fetch {
        Fetch::Failed(e)
    }
}

/// What an `hf-hub` error amounts to.
enum Failure {
    /// The hub answered with an error status; `code` is its `X-Error-Code` (`RepoNotFound`,
    /// `RevisionNotFound`, `EntryNotFound`, `GatedRepo`...).
    Status { status: u16, code: Option<String> },
    /// No HTTP answer.
    Unreachable(String),
    /// Anything else (cache I/O, a header missing from the answer...).
    Other(String),
}

impl Failure {
    fn of(e: ApiError) -> Failure {
        match e {
            ApiError::RequestError(e) => {
                let text = e.to_string();
                match (*e).into_response() {
                    Some(r) => Failure::Status { status: r.status(), code: r.header("x-error-code").map(str::to_owned) },
                    None => Failure::Unreachable(text),
                }
            }
            ApiError::TooManyRetries(e) => Failure::of(*e),
            ApiError::LockAcquisition(p) => Failure::Other(format!(
                "another process is downloading into {} (its lock stayed taken); retry when it is done",
                p.display()
            )),
            other => Failure::Other(other.to_string()),
        }
    }

    /// The user's error: auth failures say what to do with HF_TOKEN (never its value).
    fn into_fetch(self, model: &HubModel, settings: &HubSettings, what: &str) -> Fetch {
        let reason = match self {
            Failure::Unreachable(why) => return Fetch::Unreachable(why),
            Failure::Status { status: status @ (401 | 403), code } => {
                let hint = if settings.has_token() {
                    "HF_TOKEN is set but does not grant access (a gated repo needs its terms accepted on the hub)"
                } else {
                    "if it is private or gated, set HF_TOKEN to a token that can read it"
                };
                format!(
                    "the hub at {} refused {what} (HTTP {status}{}): the repo does not exist or {hint}",
                    settings.endpoint,
                    code_suffix(&code)
                )
            }
            Failure::Status { status: 404, code: Some(code) } if code == "RevisionNotFound" => {
                format!("no revision '{}' in the repo at {}", model.revision, settings.endpoint)
            }
            Failure::Status { status: 404, code } => {
                format!("no such repo at {} ({what}: HTTP 404{})", settings.endpoint, code_suffix(&code))
            }
            Failure::Status { status, code } => format!("{what} failed at {}: HTTP {status}{}", settings.endpoint, code_suffix(&code)),
            Failure::Other(why) => format!("{what}: {why}"),
        };
        Fetch::Failed(Error::Hub { model: model.to_string(), reason })
    }
}

fn code_suffix(code: &Option<String>) -> String {
    code.as_deref().map(|c| format!(", {c}")).unwrap_or_default()
}

/// The files of the revision and the commit it names, from the hub's listing.
struct Listing {
    commit: String,
    files: BTreeSet<String>,
}

/// Fetches what the snapshot lacks: the files the listing names, or, where the endpoint has no
/// listing (a plain mirror), each file in turn, a 404 meaning absent.
fn fetch(model: &HubModel, settings: &HubSettings, rc: &RepoCache) -> Result<PathBuf, Fetch> {
    let api = ApiBuilder::from_cache(Cache::new(settings.cache.clone()))
        .with_endpoint(settings.endpoint.clone())
        .with_token(settings.token.clone())
        .with_progress(false)
        .build()
        .map_err(|e| Failure::of(e).into_fetch(model, settings, "starting the HTTP client"))?;
    let repo = api.repo(Repo::with_revision(model.repo_id(), RepoType::Model, model.revision.clone()));
    let get = Getter { repo: &repo, model, settings, rc };
    let commit = match list(&repo, model, settings)? {
        Some(listing) => get.listed(&listing)?,
        None => get.each()?,
    };
    rc.write_ref(&model.revision, &commit)?;
    Ok(rc.snapshot(&commit))
}

/// The repo's files at the revision, or `None` where the endpoint has no listing.
fn list(repo: &ApiRepo, model: &HubModel, settings: &HubSettings) -> Result<Option<Listing>, Fetch> {
    match repo.info() {
        Ok(info) if is_commit_hash(&info.sha) => {
            Ok(Some(Listing { commit: info.sha, files: info.siblings.into_iter().map(|s| s.rfilename).collect() }))
        }
        Ok(info) => {
            tracing::debug!("{model}: the listing names commit '{}', not a hash; asking for each file", info.sha);
            Ok(None)
        }
        Err(e) => match Failure::of(e) {
            f @ (Failure::Unreachable(_) | Failure::Status { status: 401 | 403, .. }) => {
                Err(f.into_fetch(model, settings, "the repo listing"))
            }
            Failure::Status { status: 404, code: Some(code) } if code == "RepoNotFound" || code == "RevisionNotFound" => {
                Err(Failure::Status { status: 404, code: Some(code) }.into_fetch(model, settings, "the repo listing"))
            }
            Failure::Status { status, .. } => {
                tracing::debug!("{model}: no repo listing at {} (HTTP {status}); asking for each file", settings.endpoint);
                Ok(None)
            }
            Failure::Other(why) => {
                tracing::debug!("{model}: the repo listing could not be read ({why}); asking for each file");
                Ok(None)
            }
        },
    }
}

/// Downloads into one snapshot.
struct Getter<'a> {
    repo: &'a ApiRepo,
    model: &'a HubModel,
    settings: &'a HubSettings,
    rc: &'a RepoCache,
}

impl Getter<'_> {
    fn failed(&self, reason: String) -> Fetch {
        Fetch::Failed(Error::Hub { model: self.model.to_string(), reason })
    }

    /// With the listing: the config, the preferred weights and the optional files it names;
    /// the optional files it does not name are recorded as absent.
    fn listed(&self, l: &Listing) -> Result<String, Fetch> {
        let shown = || l.files.iter().take(12).cloned().collect::<Vec<_>>().join(", ");
        if !l.files.contains(CONFIG_FILE) {
            return Err(self.failed(format!(
                "no {CONFIG_FILE} at commit {}: not an open_clip model repo (it holds: {})",
                l.commit,
                shown()
            )));
        }
        let weights = WEIGHTS_FILES
            .iter()
            .find(|w| l.files.contains(**w))
            .ok_or_else(|| self.failed(format!("no {} at commit {} (it holds: {})", WEIGHTS_FILES.join(" or "), l.commit, shown())))?;
        for file in [CONFIG_FILE, weights].into_iter().chain(OPTIONAL_FILES.into_iter().filter(|f| l.files.contains(*f))) {
            if !self.rc.has(&l.commit, file) {
                self.download(file, Some(&l.commit))?
                    .ok_or_else(|| self.failed(format!("{file} is listed at commit {} but its download gave 404", l.commit)))?;
            }
        }
        for file in OPTIONAL_FILES.into_iter().filter(|f| !l.files.contains(*f)) {
            self.rc.mark_absent(&l.commit, file)?;
        }
        Ok(l.commit.clone())
    }

    /// Without a listing: the config (which tells the commit), the first weights file that
    /// exists, then each optional file.
    fn each(&self) -> Result<String, Fetch> {
        let config = self.download(CONFIG_FILE, None)?.ok_or_else(|| {
            self.failed(format!("no {CONFIG_FILE} at {}: no such repo or revision, or not an open_clip model repo", self.settings.endpoint))
        })?;
        let commit =
            commit_of_pointer(&config).ok_or_else(|| self.failed(format!("hf-hub put {} outside a snapshot", config.display())))?;
        let mut found = false;
        for w in WEIGHTS_FILES {
            if self.rc.has(&commit, w) || self.download(w, Some(&commit))?.is_some() {
                found = true;
                break;
            }
            self.rc.mark_absent(&commit, w)?;
        }
        if !found {
            return Err(self.failed(format!("no {} at commit {commit}", WEIGHTS_FILES.join(" or "))));
        }
        for file in OPTIONAL_FILES {
            if self.rc.has(&commit, file) || self.rc.known_absent(&commit, file) {
                continue;
            }
            if self.download(file, Some(&commit))?.is_none() {
                self.rc.mark_absent(&commit, file)?;
            }
        }
        Ok(commit)
    }

    /// One file into the cache (`None`: the repo has no such file). It must land in the snapshot
    /// of `commit` when given: a branch that moves mid-download would mix two commits.
    fn download(&self, file: &str, commit: Option<&str>) -> Result<Option<PathBuf>, Fetch> {
        let progress = LogProgress::new(self.model, file);
        let path = match self.repo.download_with_progress(file, progress) {
            Ok(p) => p,
            Err(e) => {
                return match Failure::of(e) {
                    Failure::Status { status: 404, code } if code.as_deref().is_none_or(|c| c == "EntryNotFound") => Ok(None),
                    f => Err(f.into_fetch(self.model, self.settings, &format!("downloading {file}"))),
                };
            }
        };
        if let Some(expected) = commit {
            let got = commit_of_pointer(&path).unwrap_or_default();
            if got != expected {
                return Err(self.failed(format!(
                    "revision '{}' moved from commit {expected} to {got} during the download; run again",
                    self.model.revision
                )));
            }
        }
        verify_blob(&path).map_err(|reason| self.failed(format!("{file}: {reason}")))?;
        Ok(Some(path))
    }
}

/// The commit of a snapshot file `…/snapshots/<commit>/<file>`.
fn commit_of_pointer(p: &Path) -> Option<String> {
    let c = p.parent()?.file_name()?.to_str()?;
    is_commit_hash(c).then(|| c.to_owned())
}

/// A large file's blob is named after its sha256 (the hub's `X-Linked-Etag`): check the bytes
/// against it, so that a corrupt or mis-resumed download is never loaded. On a mismatch the
/// blob and its link go, and the next run downloads again.
fn verify_blob(pointer: &Path) -> Result<(), String> {
    let blob = pointer.canonicalize().map_err(|e| format!("{}: {e}", pointer.display()))?;
    let Some(expected) = blob.file_name().and_then(|n| n.to_str()).filter(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()))
    else {
        return Ok(());
    };
    let mut f = std::fs::File::open(&blob).map_err(|e| format!("{}: {e}", blob.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| format!("{}: {e}", blob.display()))?;
    let got = hex::encode(h.finalize());
    if got == expected.to_ascii_lowercase() {
        return Ok(());
    }
    // Best effort: a leftover is caught again by this check on the next download.
    let removed = std::fs::remove_file(pointer).and(std::fs::remove_file(&blob));
    Err(format!(
        "the downloaded bytes have sha256 {got}, the hub announced {expected}: a corrupt transfer; {}",
        if removed.is_ok() { "removed, run again" } else { "remove it from the cache and run again" }
    ))
}

/// Download progress as `tracing` lines: a start line, one every [`PROGRESS_EVERY`], an end line.
struct LogProgress {
    label: String,
    size: usize,
    done: usize,
    started: Option<Instant>,
    last: Instant,
}

impl LogProgress {
    fn new(model: &HubModel, file: &str) -> LogProgress {
        LogProgress { label: format!("{model}: {file}"), size: 0, done: 0, started: None, last: Instant::now() }
    }
}

fn human_size(n: usize) -> String {
    match n {
        0..1_000_000 => format!("{:.1} kB", n as f64 / 1e3),
        _ => format!("{:.1} MB", n as f64 / 1e6),
    }
}

impl Progress for LogProgress {
    fn init(&mut self, size: usize, _filename: &str) {
        // hf-hub calls init again when the transfer starts (and after a resume): log once.
        self.size = size;
        if self.started.is_none() {
            self.started = Some(Instant::now());
            self.last = Instant::now();
            tracing::info!("{}: downloading {}", self.label, human_size(size));
        }
    }

    fn update(&mut self, n: usize) {
        self.done += n;
        if self.last.elapsed() >= PROGRESS_EVERY {
            self.last = Instant::now();
            let pct = if self.size > 0 { 100.0 * self.done as f64 / self.size as f64 } else { 0.0 };
            tracing::info!("{}: {pct:.0} % of {}", self.label, human_size(self.size));
        }
    }

    fn finish(&mut self) {
        let secs = self.started.map(|t| t.elapsed().as_secs_f64()).unwrap_or_default();
        tracing::info!("{}: {} in {secs:.1} s", self.label, human_size(self.done));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(s: &str) -> Result<HubModel, Error> {
        s.parse()
    }

    fn m(owner: &str, name: &str, rev: &str) -> HubModel {
        HubModel { owner: owner.into(), name: name.into(), revision: rev.into() }
    }

    #[test]
    fn parses_owner_name_and_revision() {
        assert_eq!(parse("hf:echonet/echo-clip").unwrap(), m("echonet", "echo-clip", "main"));
        assert_eq!(parse("hf:echonet/echo-clip-r@v1.0").unwrap(), m("echonet", "echo-clip-r", "v1.0"));
        let sha = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(parse(&format!("hf:a_b/c.d@{sha}")).unwrap(), m("a_b", "c.d", sha));
        assert_eq!(parse("hf:o/n@refs/pr/1").unwrap().revision, "refs/pr/1");
        assert_eq!(parse("hf:echonet/echo-clip").unwrap().to_string(), "hf:echonet/echo-clip@main");
        assert_eq!(parse("hf:echonet/echo-clip").unwrap().folder_name(), "models--echonet--echo-clip");
    }

    #[test]
    fn refuses_malformed_specs_with_the_reason() {
        for (spec, says) in [
            ("echonet/echo-clip", "expected hf:"),
            ("hf:echo-clip", "OWNER/NAME"),
            ("hf:/echo-clip", "owner '' is empty"),
            ("hf:echonet/", "name '' is empty"),
            ("hf:a/b/c", "only letters"),
            ("hf:a--b/c", "'--'"),
            ("hf:a/b..c", "'..'"),
            ("hf:-a/b", "start and end"),
            ("hf:a/b@", "is empty"),
            ("hf:a/b@../../x", "'..' path segment"),
            ("hf:a/b@x//y", "empty"),
            ("hf:a/b@x y", "only letters"),
            ("hf:a b/c", "only letters"),
        ] {
            let e = parse(spec).expect_err(spec).to_string();
            assert!(e.contains(says), "{spec}: {e}");
            assert!(e.starts_with(spec), "the error names the spec: {e}");
        }
        let long = format!("hf:{}/{}", "o".repeat(50), "n".repeat(50));
        assert!(parse(&long).unwrap_err().to_string().contains("96"));
    }

    #[test]
    fn recognises_hub_refs() {
        assert!(is_hub_ref("hf:a/b"));
        assert!(!is_hub_ref("data-samples/echovault-tiny"));
        assert!(!is_hub_ref("./hf:a/b"));
    }

    fn settings(vars: &[(&str, &str)]) -> HubSettings {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        HubSettings::from_vars(|k| map.get(k).cloned()).unwrap()
    }

    #[test]
    fn cache_dir_follows_huggingface_hub_precedence() {
        let base = [("HOME", "/home/u")];
        assert_eq!(settings(&base).cache, PathBuf::from("/home/u/.cache/huggingface/hub"));
        assert_eq!(settings(&[base[0], ("XDG_CACHE_HOME", "/xdg")]).cache, PathBuf::from("/xdg/huggingface/hub"));
        assert_eq!(settings(&[base[0], ("XDG_CACHE_HOME", "/xdg"), ("HF_HOME", "/hf")]).cache, PathBuf::from("/hf/hub"));
        assert_eq!(settings(&[base[0], ("HF_HOME", "/hf"), ("HUGGINGFACE_HUB_CACHE", "/legacy")]).cache, PathBuf::from("/legacy"));
        let all = [base[0], ("XDG_CACHE_HOME", "/xdg"), ("HF_HOME", "/hf"), ("HUGGINGFACE_HUB_CACHE", "/legacy"), ("HF_HUB_CACHE", "/c")];
        assert_eq!(settings(&all).cache, PathBuf::from("/c"));
        assert_eq!(settings(&[base[0], ("HF_HOME", "~/hf")]).cache, PathBuf::from("/home/u/hf/hub"));
        // Empty counts as unset, as a shell's `HF_HOME= cmd` means.
        assert_eq!(settings(&[base[0], ("HF_HOME", "")]).cache, PathBuf::from("/home/u/.cache/huggingface/hub"));
        assert!(HubSettings::from_vars(|_| None).unwrap_err().to_string().contains("HF_HOME"));
    }

    #[test]
    fn endpoint_and_offline_come_from_the_environment() {
        let base = [("HOME", "/h")];
        assert_eq!(settings(&base).endpoint, DEFAULT_ENDPOINT);
        assert_eq!(settings(&[base[0], ("HF_ENDPOINT", "http://127.0.0.1:8080/")]).endpoint, "http://127.0.0.1:8080");
        let ftp: HashMap<&str, &str> = [("HOME", "/h"), ("HF_ENDPOINT", "ftp://x")].into();
        let e = HubSettings::from_vars(|k| ftp.get(k).map(|v| v.to_string())).unwrap_err().to_string();
        assert!(e.contains("HF_ENDPOINT 'ftp://x'"), "{e}");
        assert!(!settings(&base).offline);
        for on in ["1", "ON", "yes", "True"] {
            assert!(settings(&[base[0], ("HF_HUB_OFFLINE", on)]).offline, "{on}");
        }
        assert!(!settings(&[base[0], ("HF_HUB_OFFLINE", "0")]).offline);
    }

    #[test]
    fn token_from_env_then_file_and_never_in_debug() {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().to_str().unwrap();
        let secret = "hf_SECRETsecret123";
        let s = settings(&[("HOME", "/h"), ("HF_TOKEN", secret), ("HUGGING_FACE_HUB_TOKEN", "other")]);
        assert_eq!(s.token.as_deref(), Some(secret));
        assert!(!format!("{s:?}").contains(secret), "{s:?}");
        assert_eq!(settings(&[("HOME", "/h"), ("HUGGING_FACE_HUB_TOKEN", "legacy")]).token.as_deref(), Some("legacy"));
        assert_eq!(settings(&[("HOME", "/h"), ("HF_HOME", home)]).token, None);
        std::fs::write(tmp.path().join("token"), "from-file\n").unwrap();
        assert_eq!(settings(&[("HOME", "/h"), ("HF_HOME", home)]).token.as_deref(), Some("from-file"));
        assert_eq!(settings(&[("HOME", "/h"), ("HF_HOME", home), ("HF_TOKEN", "env")]).token.as_deref(), Some("env"));
        let other = tmp.path().join("elsewhere");
        std::fs::write(&other, "path-token").unwrap();
        let s = settings(&[("HOME", "/h"), ("HF_HOME", home), ("HF_TOKEN_PATH", other.to_str().unwrap())]);
        assert_eq!(s.token.as_deref(), Some("path-token"));
    }

    #[test]
    fn names_a_snapshot_after_its_repo() {
        let sha = "0123456789abcdef0123456789abcdef01234567";
        let dir = PathBuf::from(format!("/c/hub/models--echonet--echo-clip-r/snapshots/{sha}"));
        assert_eq!(repo_name_of_snapshot(&dir).as_deref(), Some("echo-clip-r"));
        assert_eq!(repo_name_of_snapshot(Path::new("/m/echovault-tiny")), None);
        assert_eq!(repo_name_of_snapshot(Path::new("/c/models--a--b/snapshots/main")), None, "not a commit");
        assert_eq!(repo_name_of_snapshot(&PathBuf::from(format!("/c/datasets--a--b/snapshots/{sha}"))), None);
        assert_eq!(repo_name_of_snapshot(&PathBuf::from(format!("/c/models--a--b/other/{sha}"))), None);
    }

    #[test]
    fn cache_state_needs_config_weights_and_an_answer_for_each_optional_file() {
        let tmp = tempfile::tempdir().unwrap();
        let rc = RepoCache { dir: tmp.path().join("models--o--n") };
        let sha = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(rc.commit_of("main"), None);
        assert_eq!(rc.commit_of(sha).as_deref(), Some(sha), "a commit names itself");
        rc.write_ref("main", sha).unwrap();
        rc.write_ref("refs/pr/1", sha).unwrap();
        assert_eq!(rc.commit_of("main").as_deref(), Some(sha));
        assert_eq!(rc.commit_of("refs/pr/1").as_deref(), Some(sha));

        let snap = rc.snapshot(sha);
        std::fs::create_dir_all(&snap).unwrap();
        assert_eq!(rc.state(sha), State::Missing);
        std::fs::write(snap.join(CONFIG_FILE), "{}").unwrap();
        assert_eq!(rc.state(sha), State::Missing, "no weights");
        // A dangling link (blob gone) is no file.
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink("../../blobs/gone", snap.join(WEIGHTS_FILES[0])).unwrap();
            assert_eq!(rc.state(sha), State::Missing);
        }
        std::fs::write(snap.join(WEIGHTS_FILES[1]), "w").unwrap();
        assert_eq!(rc.state(sha), State::Usable);
        std::fs::write(snap.join("tokenizer.json"), "{}").unwrap();
        assert_eq!(rc.state(sha), State::Usable, "template_vocab.txt unanswered");
        rc.mark_absent(sha, TEMPLATE_VOCAB_FILE).unwrap();
        assert!(tmp.path().join("models--o--n/.no_exist").join(sha).join(TEMPLATE_VOCAB_FILE).is_file());
        assert_eq!(rc.state(sha), State::Complete);
    }

    #[test]
    fn offline_without_a_cached_snapshot_says_so_and_touches_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().to_str().unwrap();
        // An endpoint nobody listens on: were it asked, the error would be another one.
        let s = settings(&[("HOME", "/h"), ("HF_HUB_CACHE", cache), ("HF_HUB_OFFLINE", "1"), ("HF_ENDPOINT", "http://127.0.0.1:9")]);
        let e = resolve(&m("o", "n", "main"), &s).unwrap_err().to_string();
        assert!(e.contains("HF_HUB_OFFLINE") && e.starts_with("hf:o/n@main"), "{e}");
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "nothing written");
    }

    #[test]
    fn a_complete_cached_snapshot_is_used_without_the_network() {
        // A listener that counts connections and drops them (a fetch would then fall back to
        // the cache, so only the count tells whether the network was asked).
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = connections.clone();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                drop(s);
            }
        });
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().to_str().unwrap();
        let sha = "0123456789abcdef0123456789abcdef01234567";
        let rc = RepoCache { dir: tmp.path().join("models--o--n") };
        rc.write_ref("main", sha).unwrap();
        let snap = rc.snapshot(sha);
        std::fs::create_dir_all(&snap).unwrap();
        for f in [CONFIG_FILE, WEIGHTS_FILES[0], "tokenizer.json"] {
            std::fs::write(snap.join(f), "x").unwrap();
        }
        rc.mark_absent(sha, TEMPLATE_VOCAB_FILE).unwrap();
        let s = settings(&[("HOME", "/h"), ("HF_HUB_CACHE", cache), ("HF_ENDPOINT", &endpoint)]);
        assert_eq!(resolve(&m("o", "n", "main"), &s).unwrap(), snap);
        assert_eq!(resolve(&m("o", "n", sha), &s).unwrap(), snap);
        assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 0, "no connection to {endpoint}");
        // Without the answer for template_vocab.txt the snapshot is incomplete: the hub is asked.
        std::fs::remove_file(rc.no_exist(sha, TEMPLATE_VOCAB_FILE)).unwrap();
        assert_eq!(resolve(&m("o", "n", "main"), &s).unwrap(), snap, "unreachable hub: the cached snapshot");
        assert!(connections.load(std::sync::atomic::Ordering::SeqCst) > 0, "the listener saw the fetch");
    }
}
