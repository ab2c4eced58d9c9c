//! The tag-buffer budget: bounded, released with the last slice.

use super::*;

#[test]
fn reservations_are_bounded_and_released_with_the_last_slice() {
    let metrics = Metrics::new();
    let budget = TagBudget::new(100, &metrics);
    let mut a = budget.reservation();
    assert!(a.grow_to(60));
    let mut b = budget.reservation();
    assert!(!b.grow_to(41), "60 + 41 > 100");
    assert!(b.grow_to(40));
    assert_eq!(budget.in_use(), 100);
    b.shrink_to(10);
    assert_eq!(budget.in_use(), 70);
    drop(b);
    assert_eq!(budget.in_use(), 60);
    let bytes = a.freeze(vec![7; 60]);
    let slice = bytes.slice(10..20);
    drop(bytes);
    assert_eq!(budget.in_use(), 60, "a slice still holds the buffer");
    drop(slice);
    assert_eq!(budget.in_use(), 0);
}
