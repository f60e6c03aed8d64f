//! Tern's Secure Boot verdicts on Debian's signed kernel and images made
//! from it with sbsigntool, each compared in the same run with
//! `sbverify`'s verdict on the same files (and the Authenticode digest
//! with `pesign -h` and `osslsigncode verify`). `sbverify` has no deny
//! list: for the `dbx` cases it shows that the signature itself is sound,
//! and the `dbx` files are made by efitools from what the outside tools
//! extract (the hash, the signer certificate), so the refusal is `dbx`'s.
//!
//! Missing tools or kernel: a counted SKIP.

use std::path::{Path, PathBuf};
use std::process::Command;

use tern_secureboot::verdict::{AllowRule, DenyRule, SignatureProblem};
use tern_secureboot::{verify, Database, Policy, Report, Template, Verdict};
use tern_test_support::{debian_kernel, skip, tool};

/// The tools every case needs, the kernel, and a scratch directory.
struct Fixture {
    dir: tempfile::TempDir,
    kernel: PathBuf,
    debian_pem: PathBuf,
}

const DEBIAN_CA: &str = "/usr/share/shim/debian-uefi-ca.der";

impl Fixture {
    fn new(test: &str, tools: &[&str]) -> Option<Fixture> {
        for t in ["sbverify", "openssl"].iter().chain(tools) {
            tool(test, t)?;
        }
        let kernel = debian_kernel(test)?;
        if !Path::new(DEBIAN_CA).exists() {
            skip(
                test,
                "no /usr/share/shim/debian-uefi-ca.der (apt-get install shim-unsigned)",
            );
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let debian_pem = dir.path().join("debian-ca.pem");
        sh(Command::new("openssl")
            .args(["x509", "-inform", "der", "-in", DEBIAN_CA, "-out"])
            .arg(&debian_pem));
        let k = dir.path().join("vmlinuz");
        std::fs::copy(&kernel, &k).expect("copy kernel");
        Some(Fixture {
            dir,
            kernel: k,
            debian_pem,
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A self-signed RSA-2048 key pair made now.
    fn test_key(&self, name: &str) -> (PathBuf, PathBuf) {
        let key = self.path(&format!("{name}.key"));
        let crt = self.path(&format!("{name}.crt"));
        sh(Command::new("openssl")
            .args([
                "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", &format!("/CN={name}"), "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&crt));
        (key, crt)
    }
}

/// Runs a command that must succeed; returns its stdout.
fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `sbverify --cert CERT IMAGE`'s verdict (it verifies any signature of
/// the image against CERT and ignores expiry, as firmware does).
fn sbverify(cert: &Path, image: &Path) -> bool {
    let out = Command::new("sbverify")
        .arg("--cert")
        .arg(cert)
        .arg(image)
        .output()
        .expect("run sbverify");
    eprintln!(
        "sbverify --cert {} {}: {} {}",
        cert.display(),
        image.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout).trim()
    );
    out.status.success()
}

fn tern(image: &Path, template: Template, db: &[&Path], dbx: &[&Path]) -> Report {
    let mut policy = Policy::default();
    template.add_to(&mut policy.db).expect("template");
    for f in db {
        policy.db.add_file(f).expect("db file");
    }
    for f in dbx {
        policy.dbx.add_file(f).expect("dbx file");
    }
    let report = verify(&std::fs::read(image).expect("read image"), &policy);
    eprintln!("tern: {}: {}", image.display(), report.verdict);
    report
}

fn allowed_by_anchor(v: &Verdict) -> String {
    match v {
        Verdict::Allowed {
            rule: AllowRule::Certificate { anchor, .. },
        } => anchor.subject.clone(),
        other => panic!("expected allowed by a db certificate, got {other:?}"),
    }
}

#[test]
fn debian_kernel_passes_with_the_debian_template() {
    let Some(f) = Fixture::new("debian_kernel_passes_with_the_debian_template", &[]) else {
        return;
    };
    let r = tern(&f.kernel, Template::Debian, &[], &[]);
    assert_eq!(allowed_by_anchor(&r.verdict), "CN=Debian Secure Boot CA");
    match &r.verdict {
        Verdict::Allowed {
            rule: AllowRule::Certificate { signer, .. },
        } => assert!(
            signer.subject.starts_with("CN=Debian Secure Boot Signer"),
            "{signer:?}"
        ),
        _ => unreachable!(),
    }
    assert!(
        sbverify(&f.debian_pem, &f.kernel),
        "sbverify disagrees: it refuses"
    );
}

#[test]
fn debian_kernel_is_refused_with_an_empty_db() {
    let Some(f) = Fixture::new("debian_kernel_is_refused_with_an_empty_db", &[]) else {
        return;
    };
    let r = tern(&f.kernel, Template::Custom, &[], &[]);
    match &r.verdict {
        Verdict::Denied {
            rule: DenyRule::NoTrustedSignature { signatures },
        } => assert!(
            matches!(signatures[0].problem, SignatureProblem::Untrusted { .. }),
            "{signatures:?}"
        ),
        other => panic!("expected untrusted, got {other:?}"),
    }
    // sbverify cannot be given an empty store; an unrelated anchor is the
    // same trust: nothing on the kernel's chain.
    let (_, other) = f.test_key("unrelated");
    assert!(!tern(&f.kernel, Template::Custom, &[&other], &[])
        .verdict
        .allowed());
    assert!(
        !sbverify(&other, &f.kernel),
        "sbverify disagrees: it accepts"
    );
}

#[test]
fn authenticode_digest_equals_pesign_and_osslsigncode() {
    let Some(f) = Fixture::new(
        "authenticode_digest_equals_pesign_and_osslsigncode",
        &["pesign", "osslsigncode"],
    ) else {
        return;
    };
    let ours = tern(&f.kernel, Template::Custom, &[], &[])
        .sha256
        .expect("digest");
    let pesign = sh(Command::new("pesign").arg("-h").arg("-i").arg(&f.kernel));
    let pesign = pesign
        .split_whitespace()
        .nth(1)
        .expect("pesign hash")
        .to_lowercase();
    // Exits non-zero here (no CA given) but prints both digests.
    let ossl = Command::new("osslsigncode")
        .arg("verify")
        .arg("-in")
        .arg(&f.kernel)
        .output()
        .expect("osslsigncode");
    let ossl = String::from_utf8_lossy(&ossl.stdout);
    let ossl = ossl
        .lines()
        .find_map(|l| l.strip_prefix("Calculated message digest"))
        .and_then(|l| l.split(':').nth(1))
        .expect("osslsigncode digest")
        .trim()
        .to_lowercase();
    eprintln!("tern {ours} pesign {pesign} osslsigncode {ossl}");
    assert_eq!(ours, pesign);
    assert_eq!(ours, ossl);
}

#[test]
fn debian_kernel_is_refused_with_its_hash_in_dbx() {
    let Some(f) = Fixture::new(
        "debian_kernel_is_refused_with_its_hash_in_dbx",
        &["hash-to-efi-sig-list"],
    ) else {
        return;
    };
    let dbx = f.path("dbx.esl");
    let out = sh(Command::new("hash-to-efi-sig-list")
        .arg(&f.kernel)
        .arg(&dbx));
    let r = tern(&f.kernel, Template::Debian, &[], &[&dbx]);
    assert!(
        out.to_lowercase()
            .contains(r.sha256.as_deref().expect("digest")),
        "efitools hash: {out}"
    );
    match &r.verdict {
        Verdict::Denied {
            rule: DenyRule::DbxImageHash { dbx_entry },
        } => assert_eq!(dbx_entry.source, dbx.display().to_string()),
        other => panic!("expected denied by the dbx hash, got {other:?}"),
    }
    // The signature is sound (sbverify accepts it; it has no dbx).
    assert!(sbverify(&f.debian_pem, &f.kernel));
}

#[test]
fn debian_kernel_is_refused_with_its_signer_certificate_in_dbx() {
    let test = "debian_kernel_is_refused_with_its_signer_certificate_in_dbx";
    let Some(f) = Fixture::new(test, &["sbattach", "cert-to-efi-sig-list"]) else {
        return;
    };
    // The signer certificate, as the outside tools extract it.
    let p7 = f.path("sig.p7");
    sh(Command::new("sbattach")
        .arg("--detach")
        .arg(&p7)
        .arg(&f.kernel));
    let pems = sh(Command::new("openssl")
        .args(["pkcs7", "-inform", "der", "-print_certs", "-in"])
        .arg(&p7));
    let signer_pem = pems
        .split("-----END CERTIFICATE-----")
        .find(|c| c.contains("subject=CN = Debian Secure Boot Signer"))
        .expect("signer certificate in the PKCS#7");
    let signer_pem = format!(
        "{}-----END CERTIFICATE-----\n",
        &signer_pem[signer_pem.find("-----BEGIN").expect("PEM")..]
    );
    let signer = f.path("signer.pem");
    std::fs::write(&signer, signer_pem).unwrap();
    let dbx = f.path("dbx.esl");
    sh(Command::new("cert-to-efi-sig-list").arg(&signer).arg(&dbx));
    let r = tern(&f.kernel, Template::Debian, &[], &[&dbx]);
    match &r.verdict {
        Verdict::Denied {
            rule: DenyRule::DbxCertificate { certificate, .. },
        } => assert!(certificate
            .subject
            .starts_with("CN=Debian Secure Boot Signer")),
        other => panic!("expected denied by the dbx certificate, got {other:?}"),
    }
    assert!(sbverify(&f.debian_pem, &f.kernel));
    // The same certificate as a TBS hash (EFI_CERT_X509_SHA256) denies too.
    let der_path = f.path("signer.der");
    sh(Command::new("openssl")
        .args(["x509", "-outform", "der", "-in"])
        .arg(&signer)
        .arg("-out")
        .arg(&der_path));
    let cert: x509_cert::Certificate =
        der::Decode::from_der(&std::fs::read(&der_path).unwrap()).expect("signer DER");
    let tbs = der::Encode::to_der(&cert.tbs_certificate).unwrap();
    let hash = tern_secureboot::crypto::Hash::Sha256.digest(&tbs);
    let list = tern_secureboot::siglist::write(&[(
        tern_secureboot::database::NO_OWNER,
        tern_secureboot::siglist::SignatureData::TbsHash {
            hash,
            revocation_time: [0; 16],
        },
    )]);
    let tbs_dbx = f.path("tbs.esl");
    std::fs::write(&tbs_dbx, list).unwrap();
    let r = tern(&f.kernel, Template::Debian, &[], &[&tbs_dbx]);
    assert!(
        matches!(
            r.verdict,
            Verdict::Denied {
                rule: DenyRule::DbxTbsHash { .. }
            }
        ),
        "{:?}",
        r.verdict
    );
}

/// The file range of the `.text` section.
fn text_range(image: &[u8]) -> std::ops::Range<usize> {
    use object::{Object, ObjectSection};
    let file = object::File::parse(image).expect("PE");
    let s = file.section_by_name(".text").expect(".text");
    let (start, len) = s.file_range().expect("file range");
    start as usize..(start + len) as usize
}

#[test]
fn debian_kernel_is_refused_after_one_text_byte_changes() {
    let Some(f) = Fixture::new("debian_kernel_is_refused_after_one_text_byte_changes", &[]) else {
        return;
    };
    let mut bytes = std::fs::read(&f.kernel).unwrap();
    let text = text_range(&bytes);
    let at = text.start + text.len() / 2;
    bytes[at] ^= 0x01;
    let changed = f.path("changed");
    std::fs::write(&changed, &bytes).unwrap();
    let r = tern(&changed, Template::Debian, &[], &[]);
    match &r.verdict {
        Verdict::Denied {
            rule: DenyRule::NoTrustedSignature { signatures },
        } => assert!(
            matches!(
                signatures[0].problem,
                SignatureProblem::DigestMismatch { .. }
            ),
            "{signatures:?}"
        ),
        other => panic!("expected a digest mismatch, got {other:?}"),
    }
    assert!(
        !sbverify(&f.debian_pem, &changed),
        "sbverify disagrees: it accepts"
    );
}

/// The ovmf package's snakeoil key (decrypted), else a key made now.
fn signing_key(f: &Fixture) -> (PathBuf, PathBuf) {
    let key = Path::new("/usr/share/ovmf/PkKek-1-snakeoil.key");
    let pem = Path::new("/usr/share/ovmf/PkKek-1-snakeoil.pem");
    if key.exists() && pem.exists() {
        let plain = f.path("snakeoil.key");
        sh(Command::new("openssl")
            .args(["pkey", "-passin", "pass:snakeoil", "-in"])
            .arg(key)
            .arg("-out")
            .arg(&plain));
        (plain, pem.to_path_buf())
    } else {
        eprintln!("no ovmf snakeoil key: signing with a key made now");
        f.test_key("tern-test")
    }
}

#[test]
fn resigned_kernel_passes_with_its_key_in_db_only() {
    let test = "resigned_kernel_passes_with_its_key_in_db_only";
    let Some(f) = Fixture::new(test, &["sbsign", "sbattach", "cert-to-efi-sig-list"]) else {
        return;
    };
    let (key, crt) = signing_key(&f);
    let unsigned = f.path("unsigned");
    std::fs::copy(&f.kernel, &unsigned).unwrap();
    sh(Command::new("sbattach").arg("--remove").arg(&unsigned));
    let signed = f.path("resigned");
    sh(Command::new("sbsign")
        .arg("--key")
        .arg(&key)
        .arg("--cert")
        .arg(&crt)
        .arg("--output")
        .arg(&signed)
        .arg(&unsigned));
    let db = f.path("db.esl");
    sh(Command::new("cert-to-efi-sig-list").arg(&crt).arg(&db));

    let with_key = tern(&signed, Template::Custom, &[&db], &[]);
    allowed_by_anchor(&with_key.verdict);
    assert!(sbverify(&crt, &signed));
    let with_debian = tern(&signed, Template::Debian, &[], &[]);
    assert!(!with_debian.verdict.allowed());
    assert!(!sbverify(&f.debian_pem, &signed));
    // The stripped image is unsigned: refused, unless its hash is in db.
    assert!(matches!(
        tern(&unsigned, Template::Debian, &[], &[]).verdict,
        Verdict::Denied {
            rule: DenyRule::NoSignature
        }
    ));
    if let Some(_h) = tool(test, "hash-to-efi-sig-list") {
        let hdb = f.path("hash-db.esl");
        sh(Command::new("hash-to-efi-sig-list")
            .arg(&unsigned)
            .arg(&hdb));
        assert!(matches!(
            tern(&unsigned, Template::Custom, &[&hdb], &[]).verdict,
            Verdict::Allowed {
                rule: AllowRule::ImageHash { .. }
            }
        ));
    }
}

#[test]
fn dual_signed_kernel_passes_with_either_anchor() {
    let Some(f) = Fixture::new("dual_signed_kernel_passes_with_either_anchor", &["sbsign"]) else {
        return;
    };
    let (key, crt) = f.test_key("second-signer");
    let dual = f.path("dual");
    // sbsign on a signed image adds a second signature.
    sh(Command::new("sbsign")
        .arg("--key")
        .arg(&key)
        .arg("--cert")
        .arg(&crt)
        .arg("--output")
        .arg(&dual)
        .arg(&f.kernel));
    let r = tern(&dual, Template::Debian, &[], &[]);
    assert_eq!(r.signatures.len(), 2, "{:?}", r.signatures);
    assert_eq!(allowed_by_anchor(&r.verdict), "CN=Debian Secure Boot CA");
    assert!(sbverify(&f.debian_pem, &dual));
    let r = tern(&dual, Template::Custom, &[&crt], &[]);
    assert_eq!(allowed_by_anchor(&r.verdict), "CN=second-signer");
    assert!(sbverify(&crt, &dual));
    let (_, other) = f.test_key("unrelated");
    assert!(!tern(&dual, Template::Custom, &[&other], &[])
        .verdict
        .allowed());
    assert!(!sbverify(&other, &dual));
    // One anchor allowed, the other signer's certificate in dbx: denied
    // (dbx is checked for every signature before db).
    let dbx_der = f.path("second.der");
    sh(Command::new("openssl")
        .args(["x509", "-outform", "der", "-in"])
        .arg(&crt)
        .arg("-out")
        .arg(&dbx_der));
    assert!(matches!(
        tern(&dual, Template::Debian, &[], &[&dbx_der]).verdict,
        Verdict::Denied {
            rule: DenyRule::DbxCertificate { signature: 1, .. }
        }
    ));
}

#[test]
fn efitools_and_sbsiglist_lists_parse() {
    let test = "efitools_and_sbsiglist_lists_parse";
    let Some(f) = Fixture::new(
        test,
        &["cert-to-efi-sig-list", "hash-to-efi-sig-list", "sbsiglist"],
    ) else {
        return;
    };
    let owner = "11111111-2222-3333-4444-555555555555";
    let esl = f.path("debian.esl");
    sh(Command::new("cert-to-efi-sig-list")
        .args(["-g", owner])
        .arg(&f.debian_pem)
        .arg(&esl));
    let hash = f.path("hash.esl");
    sh(Command::new("hash-to-efi-sig-list")
        .arg(&f.kernel)
        .arg(&hash));
    let sbl = f.path("sbsiglist.esl");
    sh(Command::new("sbsiglist")
        .args(["--owner", owner, "--type", "x509", "--output"])
        .arg(&sbl)
        .arg(DEBIAN_CA));
    for p in [&esl, &hash, &sbl] {
        let bytes = std::fs::read(p).unwrap();
        let entries = tern_secureboot::siglist::parse(&bytes)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!(entries.len(), 1, "{}", p.display());
        // What Tern writes for those entries is byte for byte the same.
        let again = tern_secureboot::siglist::write(&[(entries[0].owner, entries[0].data.clone())]);
        assert_eq!(again, bytes, "{}", p.display());
    }
    let e = tern_secureboot::siglist::parse(&std::fs::read(&esl).unwrap()).unwrap();
    assert_eq!(e[0].owner.to_string(), owner);
    assert_eq!(
        e[0].data,
        tern_secureboot::siglist::SignatureData::X509(std::fs::read(DEBIAN_CA).unwrap())
    );
    // The efitools db passes the kernel like the template does.
    let mut db = Database::default();
    db.add_file(&esl).unwrap();
    let r = verify(
        &std::fs::read(&f.kernel).unwrap(),
        &Policy {
            db,
            dbx: Database::default(),
        },
    );
    assert!(r.verdict.allowed(), "{:?}", r.verdict);
}
