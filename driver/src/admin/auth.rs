//! Bearer tokens for the admin calls that change the query.

use tonic::{Request, Status};

/// The token mutating calls must carry, when the driver has one.
#[derive(Clone, Default)]
pub struct AdminToken(Option<String>);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "AdminToken(***)"
        } else {
            "AdminToken(none)"
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
        Self(
            token
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(String::from),
        )
    }

    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    /// Accepts the request when no token is configured or it carries `Bearer <token>`.
    pub fn check<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let Some(expected) = &self.0 else {
            return Ok(());
        };
        let given = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match given {
            Some(t) if same(t.as_bytes(), expected.as_bytes()) => Ok(()),
            Some(_) => Err(Status::permission_denied("the admin token is not valid")),
            None => Err(Status::unauthenticated(
                "this call changes the query and needs the admin token \
                 (weir admin --token-file FILE, or WEIR_ADMIN_TOKEN)",
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
}
