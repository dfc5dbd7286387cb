pub fn placeholder_for_lock() {}
