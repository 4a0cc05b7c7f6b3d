//! Debian's Orthanc (`orthanc` + `orthanc-dicomweb`, installed by tools/setup) started for a
//! test: a free loopback port, a temporary storage directory, a generated configuration with the
//! DICOMweb plugin, no DICOM (DIMSE) port, no remote access. Instances are uploaded through its
//! REST API (`POST /instances`). [`FlakyProxy`] puts faults (error statuses, bodies cut short)
//! between a client and the real server.
#![allow(dead_code, clippy::unwrap_used, clippy::print_stderr)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where Debian puts the server.
const ORTHANC_BINARIES: [&str; 2] = ["/usr/sbin/Orthanc", "/usr/bin/Orthanc"];
/// Where Debian puts the DICOMweb plugin, if `dpkg -L` cannot say.
const PLUGIN_FALLBACKS: [&str; 2] = ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/lib/orthanc/libOrthancDicomWeb.so"];

fn orthanc_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("ORTHANC") {
        return PathBuf::from(p);
    }
    ORTHANC_BINARIES.iter().map(PathBuf::from).find(|p| p.exists()).unwrap_or_else(|| {
        panic!("Orthanc is not installed (looked for {ORTHANC_BINARIES:?}): run tools/setup (Debian packages orthanc, orthanc-dicomweb)")
    })
}

/// The DICOMweb plugin's shared object, as the Debian package lists it.
fn dicomweb_plugin() -> PathBuf {
    let listed = Command::new("dpkg").args(["-L", "orthanc-dicomweb"]).output().ok();
    let from_dpkg =
        listed.and_then(|o| String::from_utf8_lossy(&o.stdout).lines().find(|l| l.ends_with("/libOrthancDicomWeb.so")).map(PathBuf::from));
    from_dpkg
        .filter(|p| p.exists())
        .or_else(|| PLUGIN_FALLBACKS.iter().map(PathBuf::from).find(|p| p.exists()))
        .unwrap_or_else(|| panic!("the Orthanc DICOMweb plugin is not installed: run tools/setup (Debian package orthanc-dicomweb)"))
}

/// A port nobody listens on at the moment.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running Orthanc (killed when dropped).
pub struct Orthanc {
    child: Option<Child>,
    /// Its HTTP port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
    /// Basic-auth user and password it requires, if any.
    pub user: Option<(String, String)>,
}

impl Orthanc {
    /// An empty Orthanc open to anyone on loopback.
    pub fn start() -> Orthanc {
        Orthanc::start_with(None)
    }

    /// An empty Orthanc; with `user`, every request needs that basic-auth user and password.
    pub fn start_with(user: Option<(&str, &str)>) -> Orthanc {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Orthanc { child: None, port: free_port(), dir, user: user.map(|(u, p)| (u.to_owned(), p.to_owned())) };
        o.write_config();
        o.launch();
        o
    }

    fn write_config(&self) {
        let storage = self.dir.path().join("storage");
        let mut config = serde_json::json!({
            "Name": "echovault-test",
            "StorageDirectory": storage,
            "IndexDirectory": storage,
            "HttpPort": self.port,
            // No DIMSE listener, no remote clients, no Lua, no jobs kept: loopback HTTP only.
            "DicomServerEnabled": false,
            "RemoteAccessAllowed": false,
            "ExecuteLuaEnabled": false,
            "SaveJobs": false,
            "Plugins": [dicomweb_plugin()],
            "DicomWeb": {"Enable": true, "Root": "/dicom-web/", "EnableWado": false, "Host": format!("127.0.0.1:{}", self.port)},
        });
        if let Some((u, p)) = &self.user {
            config["AuthenticationEnabled"] = true.into();
            config["RegisteredUsers"] = serde_json::json!({ u: p });
        } else {
            config["AuthenticationEnabled"] = false.into();
        }
        std::fs::write(self.config_path(), serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("orthanc.json")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("orthanc.log")
    }

    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).unwrap();
        let child = Command::new(orthanc_binary())
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting Orthanc: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = self.request(reqwest::Method::GET, "/system").send() {
                if r.status().is_success() {
                    return;
                }
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("Orthanc exited ({status}) at start:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "Orthanc did not answer within 60 s:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its DICOMweb root, as `ingest dicomweb:URL` takes it.
    pub fn dicomweb(&self) -> String {
        format!("{}/dicom-web", self.url())
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::blocking::RequestBuilder {
        let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        let r = client.request(method, format!("{}{path}", self.url()));
        match &self.user {
            Some((u, p)) => r.basic_auth(u, Some(p)),
            None => r,
        }
    }

    /// Uploads one DICOM file through the REST API; its Orthanc id.
    pub fn upload(&self, file: &Path) -> String {
        let bytes = std::fs::read(file).unwrap();
        let r = self.request(reqwest::Method::POST, "/instances").body(bytes).send().unwrap();
        assert!(r.status().is_success(), "uploading {}: HTTP {}", file.display(), r.status());
        let v: serde_json::Value = r.json().unwrap();
        assert_eq!(v["Status"], "Success", "uploading {}: {v}", file.display());
        v["ID"].as_str().unwrap().to_owned()
    }

    /// Its process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server (its storage is kept).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().ok();
            c.wait().ok();
        }
    }

    /// Starts it again on the same port and storage.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }
}

impl Drop for Orthanc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the proxy does to one incoming connection.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answers this status (with `Connection: close`) without asking the server.
    Status(u16),
    /// Forwards the request, then closes both sides after this many bytes of the answer.
    CutAfter(usize),
}

/// Something to do when the proxy has passed on a given number of WADO-RS retrievals.
type Hook = (usize, Box<dyn FnOnce() + Send>);

/// A loopback TCP proxy in front of a real server: each new connection takes the next fault
/// from its queue; once the queue is empty, connections pass through untouched. It counts the
/// WADO-RS instance retrievals it passes on (`GET …/instances/UID`).
pub struct FlakyProxy {
    /// Its port on 127.0.0.1.
    pub port: u16,
    faults: Arc<Mutex<std::collections::VecDeque<Fault>>>,
    /// Connections accepted so far.
    pub connections: Arc<Mutex<usize>>,
    /// Instance retrievals passed on so far.
    pub retrievals: Arc<AtomicUsize>,
    hook: Arc<Mutex<Option<Hook>>>,
}

impl FlakyProxy {
    /// A proxy to `127.0.0.1:upstream`.
    pub fn start(upstream: u16) -> FlakyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let faults = Arc::new(Mutex::new(std::collections::VecDeque::new()));
        let connections = Arc::new(Mutex::new(0));
        let retrievals = Arc::new(AtomicUsize::new(0));
        let hook: Arc<Mutex<Option<Hook>>> = Arc::new(Mutex::new(None));
        let (f, n, r, h) = (faults.clone(), connections.clone(), retrievals.clone(), hook.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                *n.lock().unwrap() += 1;
                let fault = f.lock().unwrap().pop_front();
                let (r, h) = (r.clone(), h.clone());
                std::thread::spawn(move || serve(client, upstream, fault, &r, &h));
            }
        });
        FlakyProxy { port, faults, connections, retrievals, hook }
    }

    /// Runs `f` when the `n`-th retrieval from now arrives, before passing that one on.
    pub fn on_retrieval(&self, n: usize, f: impl FnOnce() + Send + 'static) {
        let at = self.retrievals.load(Ordering::SeqCst) + n;
        *self.hook.lock().unwrap() = Some((at, Box::new(f)));
    }

    /// Queues faults for the next connections.
    pub fn inject(&self, faults: &[Fault]) {
        self.faults.lock().unwrap().extend(faults.iter().cloned());
    }

    /// Faults not yet used.
    pub fn pending(&self) -> usize {
        self.faults.lock().unwrap().len()
    }
}

/// Reads one request head (up to the empty line) from `s`.
fn read_head(s: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => break,
        }
    }
    head
}

fn serve(mut client: TcpStream, upstream: u16, fault: Option<Fault>, retrievals: &AtomicUsize, hook: &Mutex<Option<Hook>>) {
    match fault {
        Some(Fault::Status(code)) => {
            read_head(&mut client);
            let body = format!("injected {code}");
            let answer = format!("HTTP/1.1 {code} Injected\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            client.write_all(answer.as_bytes()).ok();
            client.shutdown(Shutdown::Both).ok();
        }
        Some(Fault::CutAfter(limit)) => {
            let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)) else { return };
            // GET requests only: the head is the whole request.
            let head = read_head(&mut client);
            server.write_all(&head).ok();
            let mut sent = 0;
            let mut buf = [0u8; 4096];
            while sent < limit {
                let n = match server.read(&mut buf[..(limit - sent).min(4096)]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if client.write_all(&buf[..n]).is_err() {
                    break;
                }
                sent += n;
            }
            client.shutdown(Shutdown::Both).ok();
            server.shutdown(Shutdown::Both).ok();
        }
        None => {
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else { return };
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::scope(|scope| {
                scope.spawn(|| {
                    // Requests, counted as they pass (a request head arrives in one read on
                    // loopback).
                    let mut buf = [0u8; 16 * 1024];
                    loop {
                        let n = match c2.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let chunk = &buf[..n];
                        let found = chunk.windows(b"/instances/".len()).filter(|w| *w == b"/instances/").count();
                        for _ in 0..found {
                            let now = retrievals.fetch_add(1, Ordering::SeqCst) + 1;
                            let mut h = hook.lock().unwrap();
                            if h.as_ref().is_some_and(|(at, _)| now >= *at) {
                                let (_, f) = h.take().unwrap();
                                f();
                            }
                        }
                        if s2.write_all(chunk).is_err() {
                            break;
                        }
                    }
                    s2.shutdown(Shutdown::Write).ok();
                });
                let (mut s, mut c) = (server, client);
                std::io::copy(&mut s, &mut c).ok();
                c.shutdown(Shutdown::Both).ok();
            });
        }
    }
}
