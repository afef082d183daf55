// The function modules for convex-test; it loads a module only when one of its functions runs.
export const modules = import.meta.glob("./**/*.*s");
