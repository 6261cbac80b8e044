# Warnings in keel's own code, and the hardening every build gets.
#
# Warnings are errors for developers and CI (`scripts/keel.sh test` configures with
# -DKEEL_WERROR=ON), not in a user's build: a compiler's false positive (GCC 12's -Wrestrict
# inside std::string's operator+ at -O3, PR 105329) must not stop a Release build.
option(KEEL_WERROR "Treat warnings in keel's own code as errors (developers, CI)" OFF)

# Call keel_warnings(target) on every project target.
function(keel_warnings target)
  target_compile_options(${target} PRIVATE
    -Wall -Wextra -Wpedantic
    -Wshadow -Wnon-virtual-dtor -Woverloaded-virtual
    -Wimplicit-fallthrough -Wformat=2)
  if(KEEL_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
endfunction()

# Hardening, on every target of every build type: a guest or a socket peer that finds a
# memory-safety bug meets a stack canary (-fstack-protector-strong) and checked libc buffer
# calls (_FORTIFY_SOURCE) instead of a silent overwrite. _FORTIFY_SOURCE needs the optimiser:
# Debug (-O0) builds get the stack protector only; sanitizer builds (KEEL_SANITIZE) check more
# than _FORTIFY_SOURCE does and do not combine with it, so they leave it out.
add_compile_options(-fstack-protector-strong -fstack-clash-protection)
if(NOT KEEL_SANITIZE)
  add_compile_options("$<$<NOT:$<CONFIG:Debug>>:-U_FORTIFY_SOURCE;-D_FORTIFY_SOURCE=2>")
endif()
add_link_options(-Wl,-z,relro -Wl,-z,now)
