"""keras_gr.callbacks: public API of this area (see ARCHITECTURE.md)."""
