//! `multipart/form-data` bodies of `/files` uploads: each part's file
//! name (the guest path) and where its bytes are in the body.

use std::ops::Range;

/// One part of a multipart body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// The `filename` of its `Content-Disposition`.
    pub filename: Option<String>,
    /// Its bytes within the body.
    pub data: Range<usize>,
}

/// The boundary of a `multipart/form-data` content type.
pub fn boundary(content_type: &str) -> Option<String> {
    let mut it = content_type.split(';');
    let kind = it.next()?.trim();
    if !kind.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    it.filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| k.eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim_matches('"').to_string())
        .filter(|b| !b.is_empty() && b.len() <= 200)
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    let first = *needle.first()?;
    let mut i = from;
    while i + needle.len() <= hay.len() {
        let j = i + hay[i..].iter().position(|&b| b == first)?;
        if hay.get(j..j + needle.len()) == Some(needle) {
            return Some(j);
        }
        i = j + 1;
    }
    None
}

/// The `filename` parameter of a part's headers.
fn filename(headers: &str) -> Option<String> {
    headers
        .split("\r\n")
        .find(|l| {
            l.split(':')
                .next()
                .is_some_and(|n| n.trim().eq_ignore_ascii_case("content-disposition"))
        })?
        .split(';')
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| k.eq_ignore_ascii_case("filename"))
        .map(|(_, v)| v.trim().trim_matches('"').replace("\\\"", "\""))
}

/// Splits `body` into its parts.
pub fn parse(body: &[u8], boundary: &str) -> Result<Vec<Part>, String> {
    let delim = format!("--{boundary}");
    let next_delim = format!("\r\n--{boundary}");
    let mut pos =
        find(body, delim.as_bytes(), 0).ok_or("no multipart boundary in the body")? + delim.len();
    let mut parts = Vec::new();
    loop {
        if body.get(pos..pos + 2) == Some(b"--") {
            return Ok(parts);
        }
        if body.get(pos..pos + 2) != Some(b"\r\n") {
            return Err("malformed multipart boundary line".into());
        }
        let head_start = pos + 2;
        let head_end =
            find(body, b"\r\n\r\n", head_start).ok_or("a multipart part has no header end")?;
        let headers = String::from_utf8_lossy(&body[head_start..head_end]);
        let data_start = head_end + 4;
        let data_end = find(body, next_delim.as_bytes(), data_start)
            .ok_or("a multipart part has no closing boundary")?;
        parts.push(Part {
            filename: filename(&headers),
            data: data_start..data_end,
        });
        pos = data_end + next_delim.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_and_file_names_come_out_with_binary_data_intact() {
        let ct = "multipart/form-data; boundary=\"xyz\"";
        let b = boundary(ct).unwrap();
        assert_eq!(b, "xyz");
        let mut body = Vec::new();
        body.extend_from_slice(b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"/tmp/a.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n");
        body.extend_from_slice(b"\x00\r\n--xy\xff");
        body.extend_from_slice(b"\r\n--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"b.txt\"\r\n\r\nhello");
        body.extend_from_slice(b"\r\n--xyz--\r\n");
        let parts = parse(&body, &b).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].filename.as_deref(), Some("/tmp/a.bin"));
        assert_eq!(&body[parts[0].data.clone()], b"\x00\r\n--xy\xff");
        assert_eq!(parts[1].filename.as_deref(), Some("b.txt"));
        assert_eq!(&body[parts[1].data.clone()], b"hello");
    }

    #[test]
    fn malformed_bodies_are_refused() {
        assert!(boundary("application/octet-stream").is_none());
        assert!(parse(b"nothing here", "xyz").is_err());
        assert!(parse(
            b"--xyz\r\nContent-Disposition: form-data\r\n\r\nno end",
            "xyz"
        )
        .is_err());
    }
}
