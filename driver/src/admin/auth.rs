//! Bearer tokens for the admin calls that change the query, and for reads when asked.

use tonic::{Request, Status};

/// The token mutating calls (and reads, with [`AdminToken::for_reads_too`]) must carry, when
/// the driver has one.
#[derive(Clone, Default)]
pub struct AdminToken {
    token: Option<String>,
    reads: bool,
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match (self.token.is_some(), self.reads) {
            (true, true) => "AdminToken(***, reads too)",
            (true, false) => "AdminToken(***)",
            (false, _) => "AdminToken(none)",
        })
    }
}

/// Compares without stopping at the first difference, so timing tells nothing of the token.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl AdminToken {
    /// A token (surrounding whitespace, as a file's trailing newline, is not part of it); an
    /// empty one means none.
    pub fn new(token: Option<&str>) -> Self {
        Self {
            token: token
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(String::from),
            reads: false,
        }
    }

    /// Reads (status, progress, executors, watch) need the token too; an error without one.
    pub fn for_reads_too(self) -> Result<Self, String> {
        if self.token.is_none() {
            return Err("requiring the admin token for reads needs a token \
                        (--admin-token-file or WEIR_ADMIN_TOKEN)"
                .into());
        }
        Ok(Self {
            reads: true,
            ..self
        })
    }

    pub fn is_set(&self) -> bool {
        self.token.is_some()
    }

    /// Accepts a read when reads need no token, else as [`Self::check`].
    pub fn check_read<T>(&self, request: &Request<T>) -> Result<(), Status> {
        if self.reads {
            self.check(request)
        } else {
            Ok(())
        }
    }

    /// Accepts the request when no token is configured or it carries `Bearer <token>`.
    pub fn check<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        self.check_header(header)
    }

    /// Accepts an `authorization` header (gRPC metadata or HTTP) as [`Self::check`] does.
    pub fn check_header(&self, header: Option<&str>) -> Result<(), Status> {
        let Some(expected) = &self.token else {
            return Ok(());
        };
        let given = header
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match given {
            Some(t) if same(t.as_bytes(), expected.as_bytes()) => Ok(()),
            Some(_) => Err(Status::permission_denied("the admin token is not valid")),
            None => Err(Status::unauthenticated(
                "this call needs the admin token \
                 (weir admin --token-file FILE, or WEIR_ADMIN_TOKEN; the dashboard asks for it)",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(auth: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(a) = auth {
            r.metadata_mut().insert("authorization", a.parse().unwrap());
        }
        r
    }

    #[test]
    fn only_the_right_bearer_token_passes() {
        let token = AdminToken::new(Some("s3cret\n"));
        assert!(token.check(&request(Some("Bearer s3cret"))).is_ok());
        let missing = token.check(&request(None)).unwrap_err();
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
        let wrong = token.check(&request(Some("Bearer s3cre7"))).unwrap_err();
        assert_eq!(wrong.code(), tonic::Code::PermissionDenied);
        assert!(token.check(&request(Some("s3cret"))).is_err());
        assert!(AdminToken::new(None).check(&request(None)).is_ok());
        assert!(!format!("{token:?}").contains("s3cret"));
    }

    #[test]
    fn reads_need_the_token_only_when_asked() {
        let open = AdminToken::new(Some("s3cret"));
        assert!(open.check_read(&request(None)).is_ok());
        let closed = open.for_reads_too().unwrap();
        assert_eq!(
            closed.check_read(&request(None)).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert!(closed.check_read(&request(Some("Bearer s3cret"))).is_ok());
        assert!(AdminToken::new(None).for_reads_too().is_err());
        assert!(!format!("{closed:?}").contains("s3cret"));
    }
}
