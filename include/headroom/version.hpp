// SPDX-License-Identifier: MIT
// The one source of truth for headroom's version; CMakeLists.txt reads it.
#pragma once

#define HEADROOM_VERSION_MAJOR 0
#define HEADROOM_VERSION_MINOR 1
#define HEADROOM_VERSION_PATCH 0
