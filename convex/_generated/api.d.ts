/* eslint-disable */
/**
 * Generated `api` utility.
 *
 * THIS CODE IS AUTOMATICALLY GENERATED.
 *
 * To regenerate, run `npx convex dev`.
 * @module
 */

import type {
  ApiFromModules,
  FilterApi,
  FunctionReference,
} from "convex/server";
import type * as apiTokens from "../apiTokens.js";
import type * as bulkJobs from "../bulkJobs.js";
import type * as containerJobs from "../containerJobs.js";
import type * as envTemplates from "../envTemplates.js";
import type * as executorHosts from "../executorHosts.js";
import type * as model_containerJobs from "../model/containerJobs.js";
import type * as model_containers from "../model/containers.js";
import type * as model_jobs from "../model/jobs.js";
import type * as model_workItems from "../model/workItems.js";
import type * as validators from "../validators.js";
import type * as workItems from "../workItems.js";

/**
 * A utility for referencing Convex functions in your app's API.
 *
 * Usage:
 * ```js
 * const myFunctionReference = api.myModule.myFunction;
 * ```
 */
declare const fullApi: ApiFromModules<{
  apiTokens: typeof apiTokens;
  bulkJobs: typeof bulkJobs;
  containerJobs: typeof containerJobs;
  envTemplates: typeof envTemplates;
  executorHosts: typeof executorHosts;
  "model/containerJobs": typeof model_containerJobs;
  "model/containers": typeof model_containers;
  "model/jobs": typeof model_jobs;
  "model/workItems": typeof model_workItems;
  validators: typeof validators;
  workItems: typeof workItems;
}>;
export declare const api: FilterApi<
  typeof fullApi,
  FunctionReference<any, "public">
>;
export declare const internal: FilterApi<
  typeof fullApi,
  FunctionReference<any, "internal">
>;
