//! Where a migration goes to or is awaited on: `tcp:HOST:PORT` or
//! `unix:PATH`, as one string on the wire.

use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A migration endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `tcp:HOST:PORT` (port 0 on a listener: any free port).
    Tcp {
        /// Host name or address (an IPv6 address in brackets).
        host: String,
        /// Port.
        port: u16,
    },
    /// `unix:PATH` (same host: memory is handed over, not copied).
    Unix(PathBuf),
}

/// A malformed endpoint.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// `tcp:` without a host or a valid port.
    #[error("'{0}': expected tcp:HOST:PORT")]
    Tcp(String),
    /// `unix:` without a path.
    #[error("'{0}': expected unix:PATH")]
    Unix(String),
    /// Neither `tcp:` nor `unix:`.
    #[error("'{0}': expected tcp:HOST:PORT or unix:PATH")]
    Scheme(String),
}

impl FromStr for Endpoint {
    type Err = EndpointError;
    fn from_str(s: &str) -> Result<Self, EndpointError> {
        if let Some(a) = s.strip_prefix("tcp:") {
            match a.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() => match port.parse() {
                    Ok(port) => Ok(Endpoint::Tcp {
                        host: host.into(),
                        port,
                    }),
                    Err(_) => Err(EndpointError::Tcp(s.into())),
                },
                _ => Err(EndpointError::Tcp(s.into())),
            }
        } else if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                return Err(EndpointError::Unix(s.into()));
            }
            Ok(Endpoint::Unix(p.into()))
        } else {
            Err(EndpointError::Scheme(s.into()))
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl Serialize for Endpoint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_endpoints() {
        for text in ["tcp:127.0.0.1:4000", "tcp:[::1]:0", "unix:/run/a b,c.sock"] {
            let e: Endpoint = text.parse().unwrap();
            assert_eq!(e.to_string(), text);
        }
        assert_eq!(
            "tcp:h:7".parse::<Endpoint>().unwrap(),
            Endpoint::Tcp {
                host: "h".into(),
                port: 7
            }
        );
        assert_eq!(
            "tcp:h".parse::<Endpoint>(),
            Err(EndpointError::Tcp("tcp:h".into()))
        );
        assert!(matches!(
            "tcp::80".parse::<Endpoint>(),
            Err(EndpointError::Tcp(_))
        ));
        assert!(matches!(
            "tcp:h:99999".parse::<Endpoint>(),
            Err(EndpointError::Tcp(_))
        ));
        assert!(matches!(
            "unix:".parse::<Endpoint>(),
            Err(EndpointError::Unix(_))
        ));
        assert!(matches!(
            "udp:h:1".parse::<Endpoint>(),
            Err(EndpointError::Scheme(_))
        ));
        let json = serde_json::to_string(&Endpoint::Unix("/x".into())).unwrap();
        assert_eq!(json, r#""unix:/x""#);
        assert!(serde_json::from_str::<Endpoint>(r#""nope""#).is_err());
    }
}
