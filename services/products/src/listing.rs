//! A listing request — filters, sort, page — checked once for REST and gRPC
//! alike, and the HATEOAS links of its pages.

use shop_common::problem::FieldError;
use shop_common::validate::cents;

use crate::catalog::{Filter, Sort};

pub const DEFAULT_LIMIT: u32 = 20;
pub const MAX_LIMIT: u32 = 100;
const MAX_PAGE: i64 = 1_000_000;

/// As the caller sent it; field names are the REST ones.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListingRequest {
    pub category: Option<String>,
    pub min_price: Option<f64>,
    pub max_price: Option<f64>,
    pub q: Option<String>,
    pub page: Option<i64>,
    pub limit: Option<i64>,
    pub sort: Option<String>,
}

/// Checked and ready to query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub filter: Filter,
    pub sort: Sort,
    pub page: u32,
    pub limit: u32,
}

impl ListingRequest {
    pub fn check(self) -> Result<Listing, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut price = |field: &str, value: Option<f64>| match value.map(cents) {
            None => None,
            Some(Ok(c)) => Some(c),
            Some(Err(message)) => {
                errors.push(FieldError::new(field, message));
                None
            }
        };
        let min_cents = price("minPrice", self.min_price);
        let max_cents = price("maxPrice", self.max_price);
        if let (Some(min), Some(max)) = (min_cents, max_cents)
            && min > max
        {
            errors.push(FieldError::new(
                "minPrice",
                "must not be greater than maxPrice",
            ));
        }
        let page = match self.page {
            None => 1,
            Some(p) if (1..=MAX_PAGE).contains(&p) => p as u32,
            Some(_) => {
                errors.push(FieldError::new(
                    "page",
                    format!("must be between 1 and {MAX_PAGE}"),
                ));
                1
            }
        };
        let limit = match self.limit {
            None => DEFAULT_LIMIT,
            Some(l) if (1..=i64::from(MAX_LIMIT)).contains(&l) => l as u32,
            Some(_) => {
                errors.push(FieldError::new(
                    "limit",
                    format!("must be between 1 and {MAX_LIMIT}"),
                ));
                DEFAULT_LIMIT
            }
        };
        let sort = match self.sort.as_deref() {
            None | Some("") => Sort::default(),
            Some(s) => Sort::parse(s).unwrap_or_else(|| {
                errors.push(FieldError::new(
                    "sort",
                    format!("must be one of {}", Sort::ALL.join(", ")),
                ));
                Sort::default()
            }),
        };
        let text = |s: Option<String>| s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
        let category = text(self.category);
        let q = text(self.q);
        for (field, value) in [("category", &category), ("q", &q)] {
            if value.as_ref().is_some_and(|v| v.chars().count() > 100) {
                errors.push(FieldError::new(field, "must be at most 100 characters"));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Listing {
            filter: Filter {
                category,
                min_cents,
                max_cents,
                text: q,
            },
            sort,
            page,
            limit,
        })
    }
}

/// `ceil(total / limit)`.
pub fn total_pages(total: i64, limit: u32) -> i64 {
    (total + i64::from(limit) - 1) / i64::from(limit)
}

/// Links to this page and its neighbours, relative to `base` (the
/// collection's path as the caller sees it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageLinks {
    pub this: String,
    pub prev: Option<String>,
    pub next: Option<String>,
}

pub fn page_links(base: &str, listing: &Listing, total: i64) -> PageLinks {
    let pages = total_pages(total, listing.limit);
    let page = i64::from(listing.page);
    let link = |page: i64| {
        let mut q = form_urlencoded::Serializer::new(String::new());
        let f = &listing.filter;
        if let Some(c) = &f.category {
            q.append_pair("category", c);
        }
        if let Some(min) = f.min_cents {
            q.append_pair("minPrice", &decimal(min));
        }
        if let Some(max) = f.max_cents {
            q.append_pair("maxPrice", &decimal(max));
        }
        if let Some(text) = &f.text {
            q.append_pair("q", text);
        }
        if listing.sort != Sort::default() {
            q.append_pair("sort", listing.sort.as_str());
        }
        q.append_pair("page", &page.to_string());
        q.append_pair("limit", &listing.limit.to_string());
        format!("{base}?{}", q.finish())
    };
    PageLinks {
        this: link(page),
        prev: (page > 1).then(|| link((page - 1).min(pages.max(1)))),
        next: (page < pages).then(|| link(page + 1)),
    }
}

fn decimal(cents: i64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(r: ListingRequest) -> Vec<String> {
        r.check()
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn defaults() {
        let l = ListingRequest::default().check().unwrap();
        assert_eq!(
            (l.page, l.limit, l.sort),
            (1, DEFAULT_LIMIT, Sort::NewestFirst)
        );
        assert_eq!(l.filter, Filter::default());
    }

    #[test]
    fn bounds_name_the_field() {
        let r = |f: fn(&mut ListingRequest)| {
            let mut r = ListingRequest::default();
            f(&mut r);
            fields(r)
        };
        assert_eq!(r(|r| r.page = Some(0)), ["page"]);
        assert_eq!(r(|r| r.limit = Some(10_000)), ["limit"]);
        assert_eq!(r(|r| r.limit = Some(0)), ["limit"]);
        assert_eq!(r(|r| r.min_price = Some(-1.0)), ["minPrice"]);
        assert_eq!(r(|r| r.max_price = Some(1.234)), ["maxPrice"]);
        assert_eq!(r(|r| r.sort = Some("cheapest".into())), ["sort"]);
        assert_eq!(
            r(|r| {
                r.min_price = Some(50.0);
                r.max_price = Some(10.0);
            }),
            ["minPrice"]
        );
        assert_eq!(
            r(|r| {
                r.page = Some(-3);
                r.limit = Some(101);
            }),
            ["page", "limit"]
        );
    }

    #[test]
    fn links_keep_the_filters_and_stop_at_the_ends() {
        let listing = ListingRequest {
            category: Some("books".into()),
            min_price: Some(10.0),
            page: Some(2),
            limit: Some(5),
            sort: Some("price".into()),
            ..Default::default()
        }
        .check()
        .unwrap();
        let links = page_links("/api/v1/products", &listing, 12);
        assert_eq!(
            links.this,
            "/api/v1/products?category=books&minPrice=10.00&sort=price&page=2&limit=5"
        );
        assert_eq!(
            links.prev.as_deref(),
            Some("/api/v1/products?category=books&minPrice=10.00&sort=price&page=1&limit=5")
        );
        assert_eq!(
            links.next.as_deref(),
            Some("/api/v1/products?category=books&minPrice=10.00&sort=price&page=3&limit=5")
        );
        let last = Listing {
            page: 3,
            ..listing.clone()
        };
        assert_eq!(page_links("/p", &last, 12).next, None);
        let first = Listing { page: 1, ..listing };
        assert_eq!(page_links("/p", &first, 12).prev, None);
        assert_eq!(total_pages(0, 20), 0);
        assert_eq!(total_pages(60, 20), 3);
        assert_eq!(total_pages(61, 20), 4);
    }
}
