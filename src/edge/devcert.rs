//! Development certificates: a local CA that a developer trusts once, and a leaf certificate for
//! this machine that it signs, made with rcgen and kept up to date by [`ensure`].
//!
//! The CA is kept for as long as its two files exist, so browsers and curl that were told to
//! trust it go on trusting every leaf it signs later; the leaf is remade whenever it would no
//! longer be accepted.

use crate::edge::tls;
use anyhow::{Context as _, anyhow, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier as _;
use rustls::pki_types::{CertificateDer, DnsName, ServerName, UnixTime};
use rustls::{CertificateError, RootCertStore};
use std::fmt;
use std::fs;
use std::io::{self, Write as _};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use yasna::models::ObjectIdentifier;
use yasna::{Tag, TagClass};

/// File name of the CA certificate, the one to import into browsers.
pub const CA_CERT_FILE: &str = "dev-ca.pem";
/// File name of the CA's private key.
pub const CA_KEY_FILE: &str = "dev-ca-key.pem";
/// File name of the leaf certificate the relay serves.
pub const CERT_FILE: &str = "dev-cert.pem";
/// File name of the leaf's private key.
pub const KEY_FILE: &str = "dev-key.pem";

/// Names every leaf is valid for, before the caller's extra names.
pub const DEFAULT_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// Long enough that a developer imports the CA once per machine, as mkcert does.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// Under the 398 days that Safari and Chrome accept for a TLS server certificate.
const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// A leaf this close to expiry is remade, so a relay started today still serves tomorrow.
const RENEW_MARGIN: Duration = DAY;

/// Certificates start this far in the past so a phone or VM whose clock runs a little behind
/// accepts one made a moment ago.
const CLOCK_SKEW: Duration = Duration::from_secs(60 * 60);

const CA_ORGANIZATION: &str = "Intercessor";
const CA_COMMON_NAME: &str = "Intercessor development CA";
const LEAF_COMMON_NAME: &str = "Intercessor development server";

/// Where the four development files live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevCertPaths {
    /// The CA certificate: the file to trust.
    pub ca_cert: PathBuf,
    /// The CA's private key: whoever holds it can impersonate any site to browsers that trust the CA.
    pub ca_key: PathBuf,
    /// The leaf certificate, for `--tls-cert`.
    pub cert: PathBuf,
    /// The leaf's private key, for `--tls-key`.
    pub key: PathBuf,
}

impl DevCertPaths {
    /// The standard file names ([`CA_CERT_FILE`] and the rest) inside `dir`.
    pub fn in_dir(dir: &Path) -> DevCertPaths {
        DevCertPaths {
            ca_cert: dir.join(CA_CERT_FILE),
            ca_key: dir.join(CA_KEY_FILE),
            cert: dir.join(CERT_FILE),
            key: dir.join(KEY_FILE),
        }
    }
}

/// What [`ensure`] did, for the caller to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// A new CA was made: browsers and curl must be told to trust it (again).
    pub ca_created: bool,
    /// Why a new leaf was written, or `None` if the one on disk was kept.
    pub leaf_renewed: Option<Renewal>,
    /// Every name the leaf is valid for, defaults first.
    pub names: Vec<String>,
}

/// One line for a log or a terminal, e.g. "kept the development CA; made a new certificate for
/// localhost, 127.0.0.1, ::1, relay.lan (the old one does not cover relay.lan)".
impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = self.names.join(", ");
        match (self.ca_created, &self.leaf_renewed) {
            (true, _) => write!(
                f,
                "made a new development CA, to be trusted once, and a certificate for {names}"
            ),
            (false, Some(why)) => write!(
                f,
                "kept the development CA; made a new certificate for {names} ({why})"
            ),
            (false, None) => write!(f, "kept the development CA and the certificate for {names}"),
        }
    }
}

/// Why [`ensure`] made a new leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    /// The leaf certificate or its key did not exist.
    Missing,
    /// The CA was just made, so no existing leaf can chain to it.
    NewCa,
    /// The leaf has expired or expires within a day.
    Expiring,
    /// The leaf does not cover this requested name.
    MissingName(String),
    /// The leaf could not be read, its key did not fit, or the CA did not vouch for it.
    Unusable(String),
}

impl fmt::Display for Renewal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Renewal::Missing => f.write_str("there was none"),
            Renewal::NewCa => f.write_str("the CA is new"),
            Renewal::Expiring => f.write_str("the old one expires within a day"),
            Renewal::MissingName(name) => write!(f, "the old one does not cover {name}"),
            Renewal::Unusable(why) => write!(f, "the old one is unusable: {why}"),
        }
    }
}

/// Makes sure `dir` holds a development CA and a leaf it signed for `localhost`, `127.0.0.1`,
/// `::1` and every name in `extra_names` (an IP address if it parses as one, else a DNS name).
///
/// Creates `dir` if needed. Keeps the CA when both its files exist; makes a new leaf when the old
/// one is missing, expiring, lacks a name, does not fit its key, or was not signed by this CA.
/// Private keys are written readable by their owner only.
pub fn ensure(dir: &Path, extra_names: &[String]) -> anyhow::Result<(DevCertPaths, Outcome)> {
    ensure_at(dir, extra_names, SystemTime::now())
}

/// [`ensure`] as if the clock read `now`, so tests can age a certificate.
fn ensure_at(
    dir: &Path,
    extra_names: &[String],
    now: SystemTime,
) -> anyhow::Result<(DevCertPaths, Outcome)> {
    let names = leaf_names(extra_names)?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let paths = DevCertPaths::in_dir(dir);

    let (ca, ca_created) = if exists(&paths.ca_cert)? && exists(&paths.ca_key)? {
        (Ca::load(&paths, now)?, false)
    } else {
        (Ca::create(&paths, now)?, true)
    };

    let leaf_renewed = if ca_created {
        Some(Renewal::NewCa)
    } else if !(exists(&paths.cert)? && exists(&paths.key)?) {
        Some(Renewal::Missing)
    } else {
        leaf_problem(&paths, &ca, &names, now)
    };
    let names = if leaf_renewed.is_some() {
        make_leaf(&paths, &ca, &names, now)?;
        names.into_iter().map(|name| name.text).collect()
    } else {
        restrict_to_owner(&paths.key)?;
        names_held(&paths.cert)?
    };
    let outcome = Outcome {
        ca_created,
        leaf_renewed,
        names,
    };
    Ok((paths, outcome))
}

/// One name for the leaf, in each form it is needed in.
struct LeafName {
    /// As written, for logs.
    text: String,
    /// For checking a certificate the way a TLS client would.
    server_name: ServerName<'static>,
    /// For writing into the certificate.
    san: SanType,
}

/// The default names followed by `extra`, each validated and lower-cased, without repeats.
fn leaf_names(extra: &[String]) -> anyhow::Result<Vec<LeafName>> {
    let mut names: Vec<LeafName> = Vec::new();
    for raw in DEFAULT_NAMES
        .iter()
        .copied()
        .chain(extra.iter().map(String::as_str))
    {
        let name = leaf_name(raw)?;
        if !names
            .iter()
            .any(|seen| seen.server_name == name.server_name)
        {
            names.push(name);
        }
    }
    Ok(names)
}

fn leaf_name(raw: &str) -> anyhow::Result<LeafName> {
    if let Ok(ip) = raw.parse::<std::net::IpAddr>() {
        return Ok(LeafName {
            text: ip.to_string(),
            server_name: ServerName::IpAddress(ip.into()),
            san: SanType::IpAddress(ip),
        });
    }
    // "relay.lan." means "relay.lan"; webpki rejects a presented name with the trailing dot, so
    // keeping it would remake the leaf on every start.
    let trimmed = raw.strip_suffix('.').unwrap_or(raw);
    // DnsName refuses wildcards too: a leaf for "*.lan" could not be checked against a name.
    let dns = DnsName::try_from(trimmed)
        .map(|dns| dns.to_lowercase_owned())
        .map_err(|_| {
            anyhow!("certificate name {raw:?} is neither an IP address nor a host name")
        })?;
    let text = dns.as_ref().to_owned();
    let san = SanType::DnsName(
        text.clone()
            .try_into()
            .with_context(|| format!("certificate name {raw:?}"))?,
    );
    Ok(LeafName {
        text,
        server_name: ServerName::DnsName(dns),
        san,
    })
}

/// The CA, ready to sign leaves and to check them.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    verifier: Arc<WebPkiServerVerifier>,
}

impl Ca {
    fn create(paths: &DevCertPaths, now: SystemTime) -> anyhow::Result<Ca> {
        let key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).context("generating the CA key")?;
        let mut params = ca_params();
        params.not_before = time_before(now, CLOCK_SKEW)?;
        params.not_after = time_after(now, CA_VALIDITY)?;
        let cert = params
            .self_signed(&key)
            .context("signing the CA certificate")?;
        // Key first: a CA certificate on disk without its key would be kept and be useless.
        write_private(&paths.ca_key, &key.serialize_pem())?;
        write_public(&paths.ca_cert, &cert.pem())?;
        let verifier = verifier_for(cert.der().clone(), &paths.ca_cert)?;
        Ok(Ca {
            issuer: Issuer::new(params, key),
            verifier,
        })
    }

    /// Loads the CA made by an earlier run, checking that its key still signs what its
    /// certificate vouches for.
    fn load(paths: &DevCertPaths, now: SystemTime) -> anyhow::Result<Ca> {
        let key_pem = fs::read_to_string(&paths.ca_key)
            .with_context(|| format!("reading {}", paths.ca_key.display()))?;
        let key = KeyPair::from_pem(&key_pem)
            .with_context(|| format!("{}: not a private key", paths.ca_key.display()))?;
        restrict_to_owner(&paths.ca_key)?;
        let cert = tls::read_certificates(&paths.ca_cert)?
            .into_iter()
            .next()
            .with_context(|| format!("no certificate in {}", paths.ca_cert.display()))?;
        let verifier = verifier_for(cert.clone(), &paths.ca_cert)?;
        let files = format!("{} and {}", paths.ca_cert.display(), paths.ca_key.display());
        // webpki takes a trust anchor's key and name, not its dates, so the probe below would pass
        // an expired CA that browsers refuse. But it checks a server certificate's dates before
        // anything else: offered the CA itself, it answers `Expired`, or else that a CA is not a
        // server certificate. Not remade quietly: each browser was told to trust the CA by hand.
        let probe = [leaf_name("localhost")?];
        let at = unix_time(now.checked_add(RENEW_MARGIN).unwrap_or(now));
        if let Err(rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        )) = verifier.verify_server_cert(&cert, &[], &probe[0].server_name, &[], at)
        {
            bail!(
                "the development CA in {files} has expired or expires within a day; delete both \
                 to make a new one, then trust the new CA in place of the old"
            );
        }
        // Rebuilt from the same constants rather than parsed from the file, which would need
        // x509-parser and its ASN.1 stack only for this; the probe below catches a CA that these
        // constants do not describe (another tool's, or a key from a different CA).
        let ca = Ca {
            issuer: Issuer::new(ca_params(), key),
            verifier,
        };
        // Signed for the CA's own public key, so no key needs generating: the verifier looks only
        // at the signature, the chain and the names.
        let cert = leaf_params(&probe, now)?
            .signed_by(ca.issuer.key(), &ca.issuer)
            .context("signing a probe certificate with the CA key")?;
        if let Some(problem) = ca.problem(cert.der(), &probe, now) {
            let problem = match problem {
                Renewal::Unusable(why) => why,
                other => format!("{other:?}"),
            };
            bail!(
                "{files} are not a CA that intercessor made ({problem}); delete both to make a new one"
            );
        }
        Ok(ca)
    }

    /// What stops a TLS client that trusts only this CA from accepting `leaf` for every name in
    /// `names` a day from `now`, if anything.
    fn problem(
        &self,
        leaf: &CertificateDer<'_>,
        names: &[LeafName],
        now: SystemTime,
    ) -> Option<Renewal> {
        let at = unix_time(now.checked_add(RENEW_MARGIN).unwrap_or(now));
        for name in names {
            let verdict = self
                .verifier
                .verify_server_cert(leaf, &[], &name.server_name, &[], at);
            match verdict {
                Ok(_) => {}
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                )) => return Some(Renewal::MissingName(name.text.clone())),
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::Expired | CertificateError::ExpiredContext { .. },
                )) => return Some(Renewal::Expiring),
                Err(error) => return Some(Renewal::Unusable(error.to_string())),
            }
        }
        None
    }
}

/// Everything of the CA that signing a leaf depends on; the same on every run.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, CA_ORGANIZATION);
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

fn leaf_params(names: &[LeafName], now: SystemTime) -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, CA_ORGANIZATION);
    dn.push(DnType::CommonName, LEAF_COMMON_NAME);
    params.distinguished_name = dn;
    params.subject_alt_names = names.iter().map(|name| name.san.clone()).collect();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = time_before(now, CLOCK_SKEW)?;
    params.not_after = time_after(now, LEAF_VALIDITY)?;
    // The serial number is left to rcgen, which derives it from the (always fresh) public key,
    // so Firefox never sees two certificates with the same issuer and serial.
    Ok(params)
}

/// Why the leaf on disk cannot stay, or `None` if it can.
fn leaf_problem(
    paths: &DevCertPaths,
    ca: &Ca,
    names: &[LeafName],
    now: SystemTime,
) -> Option<Renewal> {
    // The same loading the relay does, so a leaf kept here is one it can serve.
    if let Err(error) = tls::load_server_config(&paths.cert, &paths.key) {
        return Some(Renewal::Unusable(format!("{error:#}")));
    }
    let chain = match tls::read_certificates(&paths.cert) {
        Ok(chain) => chain,
        Err(error) => return Some(Renewal::Unusable(format!("{error:#}"))),
    };
    match chain.first() {
        Some(leaf) => ca.problem(leaf, names, now),
        None => Some(Renewal::Unusable("no certificate".to_owned())),
    }
}

/// Every name the leaf at `path` is valid for, in its own order: a kept leaf may hold more
/// than this run asked for (names an earlier `--san` added).
fn names_held(path: &Path) -> anyhow::Result<Vec<String>> {
    let chain = tls::read_certificates(path)?;
    let leaf = chain
        .first()
        .with_context(|| format!("{} holds no certificate", path.display()))?;
    subject_alt_names(leaf)
        .map_err(|error| anyhow!("reading the names in {}: {error}", path.display()))
}

/// The DNS names and IP addresses in a certificate's subjectAltName (RFC 5280 §4.2.1.6), read
/// with yasna, the DER codec rcgen already links: only this one extension is needed, not a
/// whole X.509 parser (x509-parser would add about 130 KB to the binary).
fn subject_alt_names(cert: &[u8]) -> Result<Vec<String>, yasna::ASN1Error> {
    let extensions = yasna::parse_der(cert, |certificate| {
        certificate.read_sequence(|certificate| {
            let extensions = certificate.next().read_sequence(|tbs| {
                tbs.read_optional(|version| {
                    version.read_tagged(Tag::context(0), |v| v.read_der())
                })?;
                // serial, signature algorithm, issuer, validity, subject, public key
                for _ in 0..6 {
                    tbs.next().read_der()?;
                }
                let extensions = tbs.read_optional(|extensions| {
                    extensions.read_tagged(Tag::context(3), |extensions| {
                        extensions.collect_sequence_of(|extension| {
                            extension.read_sequence(|extension| {
                                let oid = extension.next().read_oid()?;
                                extension.read_optional(|critical| critical.read_bool())?;
                                Ok((oid, extension.next().read_bytes()?))
                            })
                        })
                    })
                })?;
                Ok(extensions.unwrap_or_default())
            })?;
            certificate.next().read_der()?;
            certificate.next().read_der()?;
            Ok(extensions)
        })
    })?;
    let subject_alt_name = ObjectIdentifier::from_slice(&[2, 5, 29, 17]);
    let Some((_, names)) = extensions.iter().find(|(oid, _)| *oid == subject_alt_name) else {
        return Ok(Vec::new());
    };
    let names = yasna::parse_der(names, |names| {
        names.collect_sequence_of(|name| name.read_tagged_der())
    })?;
    Ok(names
        .iter()
        .filter_map(|name| match (name.tag().tag_class, name.tag().tag_number) {
            (TagClass::ContextSpecific, DNS_NAME) => {
                std::str::from_utf8(name.value()).ok().map(str::to_owned)
            }
            (TagClass::ContextSpecific, IP_ADDRESS) => {
                ip_address(name.value()).map(|ip| ip.to_string())
            }
            _ => None,
        })
        .collect())
}

/// GeneralName's `dNSName [2] IA5String`.
const DNS_NAME: u64 = 2;
/// GeneralName's `iPAddress [7] OCTET STRING`.
const IP_ADDRESS: u64 = 7;

/// An IPv4 or IPv6 address from its 4 or 16 octets.
fn ip_address(octets: &[u8]) -> Option<IpAddr> {
    match <[u8; 4]>::try_from(octets) {
        Ok(v4) => Some(IpAddr::from(v4)),
        Err(_) => <[u8; 16]>::try_from(octets).ok().map(IpAddr::from),
    }
}

fn make_leaf(
    paths: &DevCertPaths,
    ca: &Ca,
    names: &[LeafName],
    now: SystemTime,
) -> anyhow::Result<()> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).context("generating the leaf key")?;
    let cert = leaf_params(names, now)?
        .signed_by(&key, &ca.issuer)
        .context("signing the leaf certificate")?;
    write_private(&paths.key, &key.serialize_pem())?;
    write_public(&paths.cert, &cert.pem())?;
    Ok(())
}

fn verifier_for(
    ca: CertificateDer<'static>,
    path: &Path,
) -> anyhow::Result<Arc<WebPkiServerVerifier>> {
    let mut roots = RootCertStore::empty();
    roots
        .add(ca)
        .with_context(|| format!("{}: not usable as a CA certificate", path.display()))?;
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), tls::provider())
        .build()
        .with_context(|| format!("{}: not usable as a CA certificate", path.display()))
}

fn time_before(now: SystemTime, by: Duration) -> anyhow::Result<time::OffsetDateTime> {
    now.checked_sub(by)
        .map(time::OffsetDateTime::from)
        .context("the system clock is out of range for a certificate")
}

fn time_after(now: SystemTime, by: Duration) -> anyhow::Result<time::OffsetDateTime> {
    now.checked_add(by)
        .map(time::OffsetDateTime::from)
        .context("the system clock is out of range for a certificate")
}

fn unix_time(at: SystemTime) -> UnixTime {
    // A clock before 1970 is broken beyond what a development certificate can fix; checking
    // at the epoch then fails on validity, which remakes the leaf.
    UnixTime::since_unix_epoch(
        at.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default(),
    )
}

fn exists(path: &Path) -> anyhow::Result<bool> {
    path.try_exists()
        .with_context(|| format!("checking {}", path.display()))
}

fn write_private(path: &Path, pem: &str) -> anyhow::Result<()> {
    write_file(path, pem.as_bytes(), 0o600)
}

fn write_public(path: &Path, pem: &str) -> anyhow::Result<()> {
    write_file(path, pem.as_bytes(), 0o644)
}

/// Writes `contents` to a fresh file beside `path`, created with `mode`, and renames it over
/// `path`: a relay reloading mid-write or a crash never sees half a file, and a key is never
/// readable by others, not even while an older, looser file of the same name is replaced.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let written = write_new(&temporary, contents, mode).and_then(|()| fs::rename(&temporary, path));
    if written.is_err() {
        // Best effort: the error that matters is the one being returned.
        let _ = fs::remove_file(&temporary);
    }
    written.with_context(|| format!("writing {}", path.display()))
}

fn write_new(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    // A leftover from a crashed run, which create_new below would refuse.
    match fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Takes group and other access away from a key file kept from an earlier run.
fn restrict_to_owner(path: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = fs::metadata(path)
            .with_context(|| format!("reading the permissions of {}", path.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            fs::set_permissions(path, fs::Permissions::from_mode(0o600))
                .with_context(|| format!("making {} readable by its owner only", path.display()))?;
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject as _;
    use std::os::unix::fs::PermissionsExt as _;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("exists").permissions().mode() & 0o777
    }

    fn read(path: &Path) -> Vec<u8> {
        fs::read(path).expect("readable")
    }

    /// Verifies `cert` for `name` against `ca` as a TLS client trusting only that CA would.
    fn verify(ca: &Path, cert: &Path, name: &str) -> Result<(), rustls::Error> {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(ca).expect("a CA certificate"))
            .expect("a usable CA");
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), tls::provider())
                .build()
                .expect("a verifier");
        let leaf = CertificateDer::from_pem_file(cert).expect("a leaf certificate");
        let name = ServerName::try_from(name).expect("a valid name");
        verifier
            .verify_server_cert(&leaf, &[], &name, &[], UnixTime::now())
            .map(|_| ())
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|name| name.to_string()).collect()
    }

    #[test]
    fn makes_all_four_files_with_private_keys() {
        let dir = tempfile::tempdir().expect("temp dir");
        let certs = dir.path().join("certs");
        let (paths, outcome) = ensure(&certs, &[]).expect("ensure");
        assert_eq!(paths, DevCertPaths::in_dir(&certs));
        assert!(outcome.ca_created);
        assert_eq!(outcome.leaf_renewed, Some(Renewal::NewCa));
        assert_eq!(outcome.names, names(&DEFAULT_NAMES));
        assert_eq!(mode(&paths.ca_key), 0o600);
        assert_eq!(mode(&paths.key), 0o600);
        for cert in [&paths.ca_cert, &paths.cert] {
            // 0o644 less whatever the umask takes away.
            assert_eq!(mode(cert) & !0o644, 0, "{}", cert.display());
            assert_eq!(mode(cert) & 0o600, 0o600, "{}", cert.display());
        }
        let mut files: Vec<_> = fs::read_dir(&certs)
            .expect("listable")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        files.sort();
        assert_eq!(files, [CA_KEY_FILE, CA_CERT_FILE, CERT_FILE, KEY_FILE]);
    }

    #[test]
    fn second_call_keeps_everything() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (paths, _) = ensure(dir.path(), &[]).expect("first");
        let before: Vec<_> = [&paths.ca_cert, &paths.ca_key, &paths.cert, &paths.key]
            .map(|path| read(path))
            .into();
        let (_, outcome) = ensure(dir.path(), &[]).expect("second");
        assert!(!outcome.ca_created);
        assert_eq!(outcome.leaf_renewed, None);
        let after: Vec<_> = [&paths.ca_cert, &paths.ca_key, &paths.cert, &paths.key]
            .map(|path| read(path))
            .into();
        assert_eq!(before, after);
    }

    #[test]
    fn new_name_remakes_the_leaf_and_keeps_the_ca() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (paths, _) = ensure(dir.path(), &[]).expect("first");
        let (ca_cert, ca_key, cert) =
            (read(&paths.ca_cert), read(&paths.ca_key), read(&paths.cert));
        assert!(verify(&paths.ca_cert, &paths.cert, "relay.test").is_err());

        let extra = names(&["Relay.Test", "192.168.1.20"]);
        let (_, outcome) = ensure(dir.path(), &extra).expect("second");
        assert!(!outcome.ca_created);
        assert_eq!(
            outcome.leaf_renewed,
            Some(Renewal::MissingName("relay.test".into()))
        );
        assert_eq!(outcome.names[3..], names(&["relay.test", "192.168.1.20"]));
        assert_eq!(read(&paths.ca_cert), ca_cert);
        assert_eq!(read(&paths.ca_key), ca_key);
        assert_ne!(read(&paths.cert), cert);
        verify(&paths.ca_cert, &paths.cert, "relay.test").expect("new name covered");
        verify(&paths.ca_cert, &paths.cert, "192.168.1.20").expect("new address covered");
        verify(&paths.ca_cert, &paths.cert, "localhost").expect("defaults still covered");

        let (_, outcome) = ensure(dir.path(), &extra).expect("third");
        assert_eq!(outcome.leaf_renewed, None);
    }

    #[test]
    fn a_kept_leaf_reports_every_name_it_holds() {
        let dir = tempfile::tempdir().expect("temp dir");
        let extra = names(&["relay.test", "192.168.1.20", "fd00::2"]);
        ensure(dir.path(), &extra).expect("first, with extra names");

        let (_, outcome) = ensure(dir.path(), &[]).expect("second, asking for the defaults only");

        assert_eq!(outcome.leaf_renewed, None);
        let mut held = names(&DEFAULT_NAMES);
        held.extend(extra);
        assert_eq!(outcome.names, held);
        assert!(outcome.to_string().ends_with(&held.join(", ")), "{outcome}");
    }

    #[test]
    fn missing_leaf_is_remade() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (paths, _) = ensure(dir.path(), &[]).expect("first");
        let ca_cert = read(&paths.ca_cert);
        fs::remove_file(&paths.cert).expect("removable");
        let (_, outcome) = ensure(dir.path(), &[]).expect("second");
        assert!(!outcome.ca_created);
        assert_eq!(outcome.leaf_renewed, Some(Renewal::Missing));
        assert_eq!(read(&paths.ca_cert), ca_cert);
        verify(&paths.ca_cert, &paths.cert, "localhost").expect("valid again");
    }

    #[test]
    fn leaf_verifies_against_the_ca_for_its_names_only() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (paths, _) = ensure(dir.path(), &[]).expect("ensure");
        for name in DEFAULT_NAMES {
            verify(&paths.ca_cert, &paths.cert, name).expect(name);
        }
        let error = verify(&paths.ca_cert, &paths.cert, "example.com").expect_err("not covered");
        assert!(
            matches!(
                error,
                rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                        | CertificateError::NotValidForNameContext { .. }
                )
            ),
            "{error}"
        );
    }

    #[test]
    fn leaf_is_remade_a_day_before_it_expires() {
        let dir = tempfile::tempdir().expect("temp dir");
        let start = SystemTime::now();
        let (paths, _) = ensure_at(dir.path(), &[], start).expect("first");
        let ca_cert = read(&paths.ca_cert);
        let (_, outcome) =
            ensure_at(dir.path(), &[], start + LEAF_VALIDITY - 2 * DAY).expect("two days before");
        assert_eq!(outcome.leaf_renewed, None);
        let (_, outcome) =
            ensure_at(dir.path(), &[], start + LEAF_VALIDITY - DAY / 2).expect("half a day before");
        assert_eq!(outcome.leaf_renewed, Some(Renewal::Expiring));
        assert!(!outcome.ca_created);
        assert_eq!(read(&paths.ca_cert), ca_cert);
    }

    #[test]
    fn expiring_ca_is_an_error_that_says_so() {
        let dir = tempfile::tempdir().expect("temp dir");
        let start = SystemTime::now();
        ensure_at(dir.path(), &[], start).expect("first");
        let (_, outcome) =
            ensure_at(dir.path(), &[], start + CA_VALIDITY - 2 * DAY).expect("two days before");
        assert!(!outcome.ca_created);
        let error = ensure_at(dir.path(), &[], start + CA_VALIDITY - DAY / 2)
            .expect_err("half a day before");
        let message = format!("{error:#}");
        assert!(message.contains("expires within a day"), "{message}");
        assert!(message.contains("delete both"), "{message}");
    }

    #[test]
    fn unreadable_leaf_is_remade() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (paths, _) = ensure(dir.path(), &[]).expect("first");
        fs::write(&paths.cert, "not a certificate").expect("writable");
        let (_, outcome) = ensure(dir.path(), &[]).expect("second");
        assert!(
            matches!(&outcome.leaf_renewed, Some(Renewal::Unusable(why)) if why.contains(CERT_FILE)),
            "{outcome:?}"
        );
        verify(&paths.ca_cert, &paths.cert, "localhost").expect("valid again");
    }

    #[test]
    fn leaf_from_another_ca_is_remade() {
        let dir = tempfile::tempdir().expect("temp dir");
        let other = tempfile::tempdir().expect("temp dir");
        let (paths, _) = ensure(dir.path(), &[]).expect("first");
        let (others, _) = ensure(other.path(), &[]).expect("other");
        fs::copy(&others.cert, &paths.cert).expect("copyable");
        fs::copy(&others.key, &paths.key).expect("copyable");
        let (_, outcome) = ensure(dir.path(), &[]).expect("second");
        assert!(
            matches!(outcome.leaf_renewed, Some(Renewal::Unusable(_))),
            "{outcome:?}"
        );
        verify(&paths.ca_cert, &paths.cert, "localhost").expect("signed by this CA again");
    }

    #[test]
    fn ca_key_that_does_not_fit_is_an_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (paths, _) = ensure(dir.path(), &[]).expect("first");
        fs::copy(&paths.key, &paths.ca_key).expect("copyable");
        let error = ensure(dir.path(), &[]).expect_err("mismatched CA");
        let message = format!("{error:#}");
        assert!(message.contains(CA_KEY_FILE), "{message}");
        assert!(message.contains("delete both"), "{message}");
    }

    #[test]
    fn loose_key_permissions_are_tightened() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (paths, _) = ensure(dir.path(), &[]).expect("first");
        for key in [&paths.ca_key, &paths.key] {
            fs::set_permissions(key, fs::Permissions::from_mode(0o644)).expect("chmod");
        }
        let (_, outcome) = ensure(dir.path(), &[]).expect("second");
        assert_eq!(outcome.leaf_renewed, None);
        assert_eq!(mode(&paths.ca_key), 0o600);
        assert_eq!(mode(&paths.key), 0o600);
    }

    #[test]
    fn rewritten_key_is_private_even_if_the_old_file_was_not() {
        let dir = tempfile::tempdir().expect("temp dir");
        let paths = DevCertPaths::in_dir(dir.path());
        fs::write(&paths.key, "old").expect("writable");
        fs::set_permissions(&paths.key, fs::Permissions::from_mode(0o666)).expect("chmod");
        ensure(dir.path(), &[]).expect("ensure");
        assert_eq!(mode(&paths.key), 0o600);
        assert!(!dir.path().join(format!("{KEY_FILE}.tmp")).exists());
    }

    #[test]
    fn names_are_checked_normalised_and_deduplicated() {
        let extra = names(&["LOCALHOST", "relay.lan.", "::1", "0:0::1", "10.0.0.2"]);
        let names: Vec<_> = leaf_names(&extra)
            .expect("valid")
            .into_iter()
            .map(|name| name.text)
            .collect();
        assert_eq!(
            names,
            ["localhost", "127.0.0.1", "::1", "relay.lan", "10.0.0.2"]
        );
        for bad in ["*.example.com", "", "two words", "-x.lan"] {
            let error = leaf_names(&[bad.to_owned()]).err().expect(bad);
            assert!(error.to_string().contains(&format!("{bad:?}")), "{error}");
        }
    }
}
