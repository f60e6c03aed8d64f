//! The web page: the single-page app built from `web/` (its `dist/`,
//! committed) embedded in the binary and served at `/` and `/ui/...`, so a
//! host needs no network and no files beside `ternd` to serve it.
//!
//! The page itself is public (it holds no data: it asks for the API token
//! and then calls the same REST API as every other client); everything
//! under `/v1` keeps its authentication.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use include_dir::{include_dir, Dir};

/// `web/dist`, as built by `scripts/build-web.sh`.
static DIST: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/../../web/dist");

/// The page's entry document.
const INDEX: &str = "index.html";

/// Routes of the page, without authentication: `/` and `/ui/` give the
/// page, `/ui/assets/...` its scripts, styles and fonts.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/ui", get(index))
        .route("/ui/", get(index))
        .route("/ui/{*path}", get(asset))
}

async fn index(headers: HeaderMap) -> Response {
    serve(INDEX, &headers)
}

async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    // Only the build's assets: not its source hash list or anything else.
    if path == INDEX || path.starts_with("assets/") {
        serve(&path, &headers)
    } else {
        not_found(&path)
    }
}

fn not_found(path: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("no such file in the web page: /ui/{path}\n"),
    )
        .into_response()
}

/// Serves `path` from the embedded build. Assets have content hashes in
/// their names (Vite), so they are cached for good; the entry document is
/// revalidated on every load (its ETag answers with 304 when unchanged) so
/// a new `ternd` shows its new page at once.
fn serve(path: &str, headers: &HeaderMap) -> Response {
    let Some(file) = DIST.get_file(path) else {
        return not_found(path);
    };
    let body = file.contents();
    let (cache, etag) = if path == INDEX {
        ("no-cache", Some(etag(body)))
    } else {
        ("public, max-age=31536000, immutable", None)
    };
    if let Some(tag) = &etag {
        let matches = headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
        if matches {
            return (
                StatusCode::NOT_MODIFIED,
                [(header::ETAG, tag.as_str()), (header::CACHE_CONTROL, cache)],
            )
                .into_response();
        }
    }
    let mut r = (
        [
            (header::CONTENT_TYPE, content_type(path)),
            (header::CACHE_CONTROL, cache),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response();
    if let Some(tag) = etag.and_then(|t| HeaderValue::from_str(&t).ok()) {
        r.headers_mut().insert(header::ETAG, tag);
    }
    r
}

/// A strong ETag: FNV-1a of the bytes (the file is fixed at build time; a
/// collision only costs a stale page until the next reload).
fn etag(body: &[u8]) -> String {
    let h = body.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("\"{h:016x}\"")
}

/// The content type of a file of the build, by its extension.
fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("woff2") => "font/woff2",
        Some("json") => "application/json",
        Some("map") => "application/json",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    /// The sources `scripts/build-web.sh` hashes, relative to `web/`.
    const SOURCES: &[&str] = &[
        "index.html",
        "package.json",
        "package-lock.json",
        "tsconfig.json",
        "vite.config.ts",
        "src",
    ];

    fn files(root: &std::path::Path, rel: &str, out: &mut Vec<String>) {
        let p = root.join(rel);
        if p.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                let name = e.unwrap().file_name().into_string().unwrap();
                files(root, &format!("{rel}/{name}"), out);
            }
        } else {
            out.push(rel.to_string());
        }
    }

    /// The committed build was made from the committed sources: the list
    /// of source hashes recorded in `dist/SOURCES.sha256` by
    /// `scripts/build-web.sh` is that of the sources now. (Whether the
    /// build itself is reproducible is `scripts/build-web.sh --check`'s.)
    #[test]
    fn the_embedded_build_matches_the_sources() {
        let web = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web");
        let mut all = Vec::new();
        for s in SOURCES {
            files(&web, s, &mut all);
        }
        // `sort` in the C locale, as the script does.
        all.sort();
        let now: String = all
            .iter()
            .map(|f| {
                let bytes = std::fs::read(web.join(f)).unwrap();
                format!("{:x}  {f}\n", Sha256::digest(&bytes))
            })
            .collect();
        let recorded = DIST
            .get_file("SOURCES.sha256")
            .and_then(|f| f.contents_utf8())
            .expect("web/dist/SOURCES.sha256 is missing: run scripts/build-web.sh");
        // Name the files that changed, were added or went away.
        let (was, is): (Vec<&str>, Vec<&str>) = (recorded.lines().collect(), now.lines().collect());
        let changed: Vec<&str> = is
            .iter()
            .filter(|l| !was.contains(l))
            .chain(was.iter().filter(|l| !is.contains(l)))
            .filter_map(|l| l.split_once("  ").map(|(_, f)| f))
            .collect();
        assert!(
            changed.is_empty(),
            "web/dist is not the build of web/'s sources (changed: {changed:?}): \
             run scripts/build-web.sh and commit web/dist"
        );
    }

    async fn get(path: &str, if_none_match: Option<&str>) -> Response {
        use tower::ServiceExt;
        let mut req = axum::http::Request::get(path);
        if let Some(t) = if_none_match {
            req = req.header(header::IF_NONE_MATCH, t);
        }
        router::<()>()
            .oneshot(req.body(axum::body::Body::empty()).unwrap())
            .await
            .unwrap()
    }

    fn head(r: &Response, name: header::HeaderName) -> &str {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    #[tokio::test]
    async fn the_page_is_served_with_types_and_cache_headers() {
        let r = get("/", None).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(head(&r, header::CONTENT_TYPE), "text/html; charset=utf-8");
        assert_eq!(head(&r, header::CACHE_CONTROL), "no-cache");
        let tag = head(&r, header::ETAG).to_string();
        assert!(tag.starts_with('"'), "{tag}");
        // Unchanged: 304 without a body.
        let again = get("/ui/", Some(&tag)).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        let js = DIST
            .get_dir("assets")
            .unwrap()
            .files()
            .find(|f| f.path().extension().is_some_and(|e| e == "js"))
            .unwrap();
        let r = get(&format!("/ui/{}", js.path().display()), None).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            head(&r, header::CONTENT_TYPE),
            "text/javascript; charset=utf-8"
        );
        assert!(head(&r, header::CACHE_CONTROL).contains("immutable"));
        // Nothing but the page and its assets, and no way out of dist/.
        for bad in [
            "/ui/SOURCES.sha256",
            "/ui/assets/none.js",
            "/ui/../Cargo.toml",
            "/ui/assets/../../Cargo.toml",
        ] {
            assert_eq!(
                get(bad, None).await.status(),
                StatusCode::NOT_FOUND,
                "{bad}"
            );
        }
    }

    #[test]
    fn the_page_and_its_assets_are_embedded_with_their_types() {
        let index = DIST.get_file(INDEX).expect("index.html embedded");
        let html = index.contents_utf8().unwrap();
        assert!(html.contains("/ui/assets/"), "{html}");
        let assets = DIST.get_dir("assets").expect("assets/ embedded");
        let types: Vec<&str> = assets
            .files()
            .map(|f| content_type(f.path().to_str().unwrap()))
            .collect();
        assert!(
            types.contains(&"text/javascript; charset=utf-8"),
            "{types:?}"
        );
        assert!(types.contains(&"text/css; charset=utf-8"), "{types:?}");
        assert_eq!(content_type("x.unknown"), "application/octet-stream");
    }
}
