//! Test certificates for the TLS tests, made with rcgen: a CA, a server
//! certificate it signs for 127.0.0.1 and localhost, an expired one, and
//! one from another CA. Written as PEM files into a fresh directory.
//! (Also used by loadgen's tests, through `#[path]`.)
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, date_time_ymd,
};

/// The PEM files of one test.
pub struct Certs {
    pub dir: PathBuf,
    /// The CA the clients trust.
    pub ca: PathBuf,
    /// Signed by `ca`, valid now, for 127.0.0.1 and localhost.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// Signed by `ca`, for 127.0.0.1 and localhost, expired in 2001.
    pub expired_cert: PathBuf,
    pub expired_key: PathBuf,
    /// Valid now, for 127.0.0.1 and localhost, but signed by another CA.
    pub foreign_cert: PathBuf,
    pub foreign_key: PathBuf,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA")
}

fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    expired: bool,
    dir: &Path,
    name: &str,
) -> (PathBuf, PathBuf) {
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("server params");
    params
        .distinguished_name
        .push(DnType::CommonName, "turbo-dex test");
    if expired {
        params.not_before = date_time_ymd(2000, 1, 1);
        params.not_after = date_time_ymd(2001, 1, 1);
    }
    let key = KeyPair::generate().expect("server key");
    let cert = params.signed_by(&key, issuer).expect("server certificate");
    let cert_path = dir.join(format!("{name}.pem"));
    let key_path = dir.join(format!("{name}-key.pem"));
    std::fs::write(&cert_path, cert.pem()).expect("write certificate");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");
    (cert_path, key_path)
}

/// Makes the certificates under `base/<name>-<pid>`.
pub fn make(base: &Path, name: &str) -> Certs {
    let dir = base.join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("certificate directory");
    let ours = ca("turbo-dex test CA");
    let other = ca("some other CA");
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ours.pem()).expect("write CA");
    let (server_cert, server_key) = leaf(&ours, false, &dir, "server");
    let (expired_cert, expired_key) = leaf(&ours, true, &dir, "expired");
    let (foreign_cert, foreign_key) = leaf(&other, false, &dir, "foreign");
    Certs {
        dir,
        ca: ca_path,
        server_cert,
        server_key,
        expired_cert,
        expired_key,
        foreign_cert,
        foreign_key,
    }
}
