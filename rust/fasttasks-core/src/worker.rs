//! worker services — being written
