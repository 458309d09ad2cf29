//! A value one owner replaces and any number of readers see, without a lock
//! on the request path: how the applier hands routes, stacks and limits to
//! the listeners. The types say who may write: [`Published`] is not `Clone`
//! and stays with the applier; [`View`] only reads.

use std::sync::{Arc, Weak};

use arc_swap::{ArcSwap, Guard};

/// The writing side, held by the one owner.
pub struct Published<T>(Arc<ArcSwap<T>>);

/// A read-only handle.
pub struct View<T>(Arc<ArcSwap<T>>);

impl<T> Clone for View<T> {
    fn clone(&self) -> Self {
        View(self.0.clone())
    }
}

/// A value and the first reader of it.
pub fn publish<T>(value: T) -> (Published<T>, View<T>) {
    let cell = Arc::new(ArcSwap::from_pointee(value));
    (Published(cell.clone()), View(cell))
}

impl<T> Published<T> {
    /// Replaces the value: readers see the old or the new one, whole.
    pub fn set(&self, value: T) {
        self.set_arc(Arc::new(value));
    }

    /// [`Published::set`] for a value the owner keeps a handle on too.
    pub fn set_arc(&self, value: Arc<T>) {
        self.0.store(value);
    }
}

impl<T> View<T> {
    /// The current value, cheaply (for the duration of one request).
    pub fn load(&self) -> Guard<Arc<T>> {
        self.0.load()
    }

    /// A handle that does not keep the value alive, for readers the value
    /// itself reaches (a metrics collector in a registry the value holds).
    pub fn downgrade(&self) -> WeakView<T> {
        WeakView(Arc::downgrade(&self.0))
    }
}

pub struct WeakView<T>(Weak<ArcSwap<T>>);

impl<T> WeakView<T> {
    pub fn upgrade(&self) -> Option<View<T>> {
        self.0.upgrade().map(View)
    }
}
