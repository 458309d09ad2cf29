//! The catalogue in the database: queries and the optimistic-concurrency
//! updates of stock and price. Every change bumps `version`; an update that
//! names a stale version changes nothing and reports the current one.

use shop_common::db::{Db, now_millis};
use shop_common::events::Outgoing;
use shop_common::outbox;
use sqlx::{AssertSqlSafe, Row};

#[derive(Debug, Clone, PartialEq)]
pub struct Product {
    pub id: String,
    pub name: String,
    pub description: String,
    pub category: String,
    pub price_cents: i64,
    pub currency: String,
    pub stock: i64,
    /// Held for orders, not yet taken out of `stock`.
    pub reserved: i64,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

macro_rules! columns {
    () => {
        "id, name, description, category, price_cents, currency, stock, reserved, version, created_at, updated_at"
    };
}
const SELECT_BY_ID: &str = concat!("SELECT ", columns!(), " FROM products WHERE id = $1");

impl Product {
    fn from_row(row: &sqlx::any::AnyRow) -> Result<Product, sqlx::Error> {
        Ok(Product {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            description: row.try_get("description")?,
            category: row.try_get("category")?,
            price_cents: row.try_get("price_cents")?,
            currency: row.try_get("currency")?,
            stock: row.try_get("stock")?,
            reserved: row.try_get("reserved")?,
            version: row.try_get("version")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }
}

/// What a listing matches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub category: Option<String>,
    pub min_cents: Option<i64>,
    pub max_cents: Option<i64>,
    /// A case-insensitive substring of the name or description.
    pub text: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sort {
    PriceAsc,
    PriceDesc,
    NameAsc,
    NameDesc,
    #[default]
    NewestFirst,
    OldestFirst,
}

impl Sort {
    pub const ALL: [&'static str; 6] = [
        "price",
        "-price",
        "name",
        "-name",
        "createdAt",
        "-createdAt",
    ];

    pub fn parse(s: &str) -> Option<Sort> {
        Some(match s {
            "price" => Sort::PriceAsc,
            "-price" => Sort::PriceDesc,
            "name" => Sort::NameAsc,
            "-name" => Sort::NameDesc,
            "createdAt" => Sort::OldestFirst,
            "-createdAt" => Sort::NewestFirst,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Sort::PriceAsc => "price",
            Sort::PriceDesc => "-price",
            Sort::NameAsc => "name",
            Sort::NameDesc => "-name",
            Sort::OldestFirst => "createdAt",
            Sort::NewestFirst => "-createdAt",
        }
    }

    /// The ORDER BY clause; the id breaks ties so pages never overlap.
    fn order_by(self) -> &'static str {
        match self {
            Sort::PriceAsc => "price_cents ASC, id ASC",
            Sort::PriceDesc => "price_cents DESC, id ASC",
            Sort::NameAsc => "name ASC, id ASC",
            Sort::NameDesc => "name DESC, id ASC",
            Sort::OldestFirst => "created_at ASC, id ASC",
            Sort::NewestFirst => "created_at DESC, id DESC",
        }
    }
}

/// A value bound to a placeholder of a built query.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Arg {
    Text(String),
    Int(i64),
}

/// The WHERE clause of `filter` with `$n` placeholders, and their values.
fn where_clause(filter: &Filter) -> (String, Vec<Arg>) {
    let mut conditions = Vec::new();
    let mut args = Vec::new();
    let mut push = |sql: &str, arg: Arg| {
        args.push(arg);
        conditions.push(sql.replace('?', &format!("${}", args.len())));
    };
    if let Some(c) = &filter.category {
        push("category = ?", Arg::Text(c.clone()));
    }
    if let Some(min) = filter.min_cents {
        push("price_cents >= ?", Arg::Int(min));
    }
    if let Some(max) = filter.max_cents {
        push("price_cents <= ?", Arg::Int(max));
    }
    if let Some(text) = &filter.text {
        let pattern = format!("%{}%", text.to_lowercase());
        push(
            "(LOWER(name) LIKE ? OR LOWER(description) LIKE ?)",
            Arg::Text(pattern),
        );
    }
    if conditions.is_empty() {
        (String::new(), args)
    } else {
        (format!(" WHERE {}", conditions.join(" AND ")), args)
    }
}

fn bind_all<'q>(
    mut query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    args: &[Arg],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    for arg in args {
        query = match arg {
            Arg::Text(s) => query.bind(s.clone()),
            Arg::Int(i) => query.bind(*i),
        };
    }
    query
}

/// One page of a listing and how many match in all.
#[derive(Debug, Clone)]
pub struct Page {
    pub items: Vec<Product>,
    pub total: i64,
}

/// What a versioned update changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versioned {
    Stock,
    PriceCents,
}

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("no such product")]
    NotFound,
    #[error("version {expected} is stale; the current version is {current}")]
    Conflict { expected: i64, current: i64 },
    #[error("{reserved} are reserved for orders")]
    BelowReserved { reserved: i64 },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

#[derive(Clone)]
pub struct Catalog {
    db: Db,
}

impl Catalog {
    pub fn new(db: Db) -> Self {
        Catalog { db }
    }

    pub async fn list(
        &self,
        filter: &Filter,
        sort: Sort,
        page: u32,
        limit: u32,
    ) -> Result<Page, sqlx::Error> {
        let (where_sql, args) = where_clause(filter);
        let count_sql = format!("SELECT COUNT(*) AS n FROM products{where_sql}");
        let total: i64 = bind_all(sqlx::query(AssertSqlSafe(count_sql)), &args)
            .fetch_one(&self.db)
            .await?
            .try_get("n")?;
        let offset = i64::from(page.saturating_sub(1)) * i64::from(limit);
        let n = args.len();
        let select_sql = format!(
            "SELECT {} FROM products{where_sql} ORDER BY {} LIMIT ${} OFFSET ${}",
            columns!(),
            sort.order_by(),
            n + 1,
            n + 2
        );
        let rows = bind_all(sqlx::query(AssertSqlSafe(select_sql)), &args)
            .bind(i64::from(limit))
            .bind(offset)
            .fetch_all(&self.db)
            .await?;
        let items = rows
            .iter()
            .map(Product::from_row)
            .collect::<Result<_, _>>()?;
        Ok(Page { items, total })
    }

    pub async fn get(&self, id: &str) -> Result<Option<Product>, sqlx::Error> {
        sqlx::query(SELECT_BY_ID)
            .bind(id.to_string())
            .fetch_optional(&self.db)
            .await?
            .as_ref()
            .map(Product::from_row)
            .transpose()
    }

    /// Sets the stock or the price if the product is still at
    /// `expected_version`, reads the row back, and stages what `announce`
    /// makes of it in the outbox, in one transaction.
    pub async fn set(
        &self,
        field: Versioned,
        id: &str,
        value: i64,
        expected_version: i64,
        announce: impl FnOnce(&Product) -> Option<Outgoing>,
    ) -> Result<Product, UpdateError> {
        let sql = match field {
            Versioned::Stock => {
                "UPDATE products SET stock = $1, version = version + 1, updated_at = $2 \
                 WHERE id = $3 AND version = $4 AND $1 >= reserved"
            }
            Versioned::PriceCents => {
                "UPDATE products SET price_cents = $1, version = version + 1, updated_at = $2 \
                 WHERE id = $3 AND version = $4"
            }
        };
        let mut tx = self.db.begin().await?;
        let changed = sqlx::query(sql)
            .bind(value)
            .bind(now_millis())
            .bind(id.to_string())
            .bind(expected_version)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let row = sqlx::query(SELECT_BY_ID)
            .bind(id.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Err(UpdateError::NotFound);
        };
        let product = Product::from_row(&row)?;
        if changed == 0 {
            if product.version == expected_version && field == Versioned::Stock {
                return Err(UpdateError::BelowReserved {
                    reserved: product.reserved,
                });
            }
            return Err(UpdateError::Conflict {
                expected: expected_version,
                current: product.version,
            });
        }
        if let Some(message) = announce(&product) {
            outbox::stage(&mut tx, &message).await?;
        }
        tx.commit().await?;
        Ok(product)
    }

    /// How many products there are (for tests and the seed check).
    pub async fn count(&self) -> Result<i64, sqlx::Error> {
        sqlx::query("SELECT COUNT(*) AS n FROM products")
            .fetch_one(&self.db)
            .await?
            .try_get("n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn where_clause_numbers_placeholders_in_order() {
        assert_eq!(where_clause(&Filter::default()), (String::new(), vec![]));
        let (sql, args) = where_clause(&Filter {
            category: Some("books".into()),
            min_cents: None,
            max_cents: Some(5000),
            text: Some("Rust".into()),
        });
        assert_eq!(
            sql,
            " WHERE category = $1 AND price_cents <= $2 AND (LOWER(name) LIKE $3 OR LOWER(description) LIKE $3)"
        );
        assert_eq!(
            args,
            vec![
                Arg::Text("books".into()),
                Arg::Int(5000),
                Arg::Text("%rust%".into())
            ]
        );
    }

    #[test]
    fn sort_names_round_trip() {
        for name in Sort::ALL {
            assert_eq!(Sort::parse(name).unwrap().as_str(), name);
        }
        assert_eq!(Sort::parse("price desc"), None);
        assert_eq!(Sort::default(), Sort::NewestFirst);
    }
}
